"""Allocation policies: verdicts around the detection step, the curve fit, and the JSON form the
server loads."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_backend.allocation import (
    AllocationPolicy,
    CurvePolicy,
    ThresholdPolicy,
    Verdict,
    load_policy,
    policy_from_dict,
    policy_to_dict,
)


@pytest.mark.parametrize(
    ("certaindex", "steps", "expected"),
    [
        (1.0, 3, Verdict.CONTINUE),  # before detection, even a certain program goes on
        (0.8, 4, Verdict.SETTLED),  # at detection, exactly the threshold settles
        (0.79, 4, Verdict.CONTINUE),
        (0.9, 5, Verdict.SETTLED),  # after detection, each step is checked again
        (0.0, 7, Verdict.CONTINUE),  # no hopeless bound set: never cut
    ],
)
def test_threshold_verdicts_around_detection(certaindex: float, steps: int, expected: Verdict) -> None:
    assert ThresholdPolicy(settle=0.8, detect_step=4).verdict(certaindex, steps, budget=16) is expected


@pytest.mark.parametrize(
    ("certaindex", "steps", "expected"),
    [
        (0.0, 4, Verdict.CONTINUE),  # detection reached but not hopeless_step (default 2 * 4)
        (0.1, 7, Verdict.CONTINUE),
        (0.2, 8, Verdict.HOPELESS),  # at hopeless_step, exactly the bound cuts
        (0.21, 8, Verdict.CONTINUE),
        (0.9, 8, Verdict.SETTLED),
    ],
)
def test_threshold_hopeless_cut(certaindex: float, steps: int, expected: Verdict) -> None:
    policy = ThresholdPolicy(settle=0.8, detect_step=4, hopeless=0.2)
    assert policy.hopeless_step == 8
    assert policy.verdict(certaindex, steps, budget=16) is expected


def test_threshold_predicted_remaining() -> None:
    policy = ThresholdPolicy(settle=0.8, detect_step=4, extra_fraction=0.5)
    assert policy.predicted_remaining(0.9, 4, 20) == 0.0  # settled
    assert policy.predicted_remaining(0.5, 6, 20) == 14.0  # continuing after detection: up to the cap
    assert policy.predicted_remaining(0.9, 1, 20) == 3 + 0.5 * 16  # prior before detection
    assert ThresholdPolicy(detect_step=4).predicted_remaining(0.0, 1, 20) == 19.0  # default prior: the cap
    assert ThresholdPolicy(detect_step=8).predicted_remaining(0.0, 1, 5) == 4.0  # budget below detection


@given(
    policy=st.one_of(
        st.builds(ThresholdPolicy, settle=st.floats(0.5, 1.0), detect_step=st.integers(1, 10),
                  extra_fraction=st.floats(0.0, 1.0)),
        st.builds(CurvePolicy, a=st.floats(0.0, 1e4), b=st.floats(-5.0, 20.0), detect_step=st.integers(1, 10)),
    ),
    certaindex=st.floats(0.0, 1.0),
    budget=st.integers(1, 64),
    data=st.data(),
)
def test_predicted_remaining_stays_within_budget(policy: AllocationPolicy, certaindex: float, budget: int,
                                                 data: st.DataObject) -> None:
    steps = data.draw(st.integers(0, budget + 8))  # a round of samples may overshoot the budget
    left = policy.predicted_remaining(certaindex, steps, budget)
    assert 0.0 <= left <= max(budget - steps, 0)
    if policy.verdict(certaindex, steps, budget) is not Verdict.CONTINUE:
        assert left == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"settle": 1.5}, "settle"),
        ({"settle": "high"}, "settle"),
        ({"detect_step": 0}, "detect_step"),
        ({"detect_step": 2.5}, "detect_step"),
        ({"hopeless": 0.9, "settle": 0.8}, "hopeless"),
        ({"hopeless": 0.1, "detect_step": 4, "hopeless_step": 3}, "hopeless_step"),
        ({"hopeless_step": 8}, "hopeless_step"),
        ({"extra_fraction": -0.1}, "extra_fraction"),
    ],
)
def test_threshold_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        ThresholdPolicy(**kwargs)


def test_curve_fit_recovers_known_parameters() -> None:
    rng = np.random.default_rng(7)
    c = rng.uniform(0.0, 1.0, 400)
    remaining = 30.0 * np.exp(-4.0 * c) * rng.normal(1.0, 0.05, c.size)
    curve = CurvePolicy.fit(c, remaining, detect_step=4)
    assert curve.a == pytest.approx(30.0, rel=0.05)
    assert curve.b == pytest.approx(4.0, rel=0.05)
    assert curve.detect_step == 4


def test_curve_verdicts_follow_the_prediction() -> None:
    curve = CurvePolicy(a=30.0, b=4.0, detect_step=4, hopeless=0.1)
    settle_at = np.log(30.0) / 4.0  # where a * exp(-b c) drops to one unit
    assert curve.verdict(settle_at + 0.01, 4, 64) is Verdict.SETTLED
    assert curve.verdict(settle_at - 0.01, 4, 64) is Verdict.CONTINUE
    assert curve.verdict(1.0, 3, 64) is Verdict.CONTINUE  # before detection
    assert curve.verdict(0.05, 7, 64) is Verdict.CONTINUE  # hopeless only from step 8
    assert curve.verdict(0.05, 8, 64) is Verdict.HOPELESS
    assert curve.predicted_remaining(0.5, 4, 64) == pytest.approx(30.0 * np.exp(-2.0))
    assert curve.predicted_remaining(0.2, 60, 64) == 4.0  # clipped to what the budget leaves
    assert curve.predicted_remaining(0.05, 60, 64) == 0.0  # hopeless: stops now


def test_curve_fit_of_programs_that_never_needed_more_settles_at_detection() -> None:
    curve = CurvePolicy.fit([0.2, 0.5, 0.9], [0, 0, 0], detect_step=2)
    assert curve.verdict(0.0, 2, 16) is Verdict.SETTLED


@pytest.mark.parametrize(
    ("certaindex", "remaining", "field"),
    [([0.5], [3.0], "certaindex"), ([0.1, 0.2], [1.0, -1.0], "remaining"), ([0.1, 0.2], [1.0], "certaindex")],
)
def test_curve_fit_rejects_bad_data(certaindex: list, remaining: list, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CurvePolicy.fit(certaindex, remaining)


@pytest.mark.parametrize(
    "policy",
    [
        ThresholdPolicy(),
        ThresholdPolicy(settle=0.65, detect_step=6, hopeless=0.15, hopeless_step=20, extra_fraction=0.4),
        CurvePolicy(a=12.5, b=3.25, detect_step=3),
        CurvePolicy(a=12.5, b=3.25, detect_step=3, hopeless=0.05),
    ],
)
def test_json_round_trip(policy: AllocationPolicy) -> None:
    d = policy_to_dict(policy)
    assert d["kind"] in ("threshold", "curve")
    assert policy_from_dict(json.loads(json.dumps(d))) == policy


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"settle": 0.8}, "kind"),
        ({"kind": "oracle"}, "kind"),
        ({"kind": "threshold", "settle": 0.8, "treshold": 0.9}, "treshold"),
        ({"kind": "threshold", "detect_step": "4"}, "detect_step"),
        ({"kind": "curve", "b": 1.0}, "a"),
        ({"kind": "curve", "a": float("nan"), "b": 1.0}, "a"),
    ],
)
def test_from_dict_names_the_bad_field(d: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        policy_from_dict(d)


def test_load_policy_reads_bare_and_calibration_files(tmp_path) -> None:
    threshold, curve = ThresholdPolicy(settle=0.7, detect_step=5), CurvePolicy(a=9.0, b=2.0)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(policy_to_dict(curve)))
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"policy": policy_to_dict(threshold), "curve": policy_to_dict(curve), "report": {}}))
    assert load_policy(bare) == curve
    assert load_policy(calibration) == threshold
    assert load_policy(calibration, which="curve") == curve


def test_load_policy_errors_name_file_and_field(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"policy": {"kind": "threshold", "settle": 2}}))
    with pytest.raises(ValueError, match=rf"^{path}: policy: settle:"):
        load_policy(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{path}: not valid JSON"):
        load_policy(path)
    path.write_text(json.dumps({"report": {}}))
    with pytest.raises(ValueError, match=rf"^{path}: .*'policy'"):
        load_policy(path)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'missing.json'}: cannot read"):
        load_policy(tmp_path / "missing.json")
