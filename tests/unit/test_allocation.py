"""Allocation policies: verdicts around the detection step and at the checks, the curve's enforced
budget, the job-size predictions, the curve fit, and the JSON form the server loads."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_backend.allocation import (
    AllocationPolicy,
    CurvePolicy,
    ThresholdPolicy,
    UniformPolicy,
    Verdict,
    load_calibration,
    load_policy,
    policy_from_dict,
    policy_to_dict,
)
from scheduler_backend.budget_curve import Curve
from scheduler_backend.replay import first_stop

SHIPPED = Path(__file__).resolve().parents[2] / "model_repository" / "dynasor" / "1" / "calibrations"


def once(policy: AllocationPolicy, certaindex: float, steps: int, budget: int = 16) -> Verdict:
    """The verdict of a program's first consult."""
    return policy.start(budget).verdict(certaindex, steps)


def run(policy: AllocationPolicy, consults: list[tuple[float, int]], budget: int = 64) -> list[Verdict]:
    """Verdicts of one program's consults, in order."""
    allocation = policy.start(budget)
    return [allocation.verdict(c, s) for c, s in consults]


@pytest.mark.parametrize(
    ("certaindex", "steps", "expected"),
    [
        (1.0, 3, Verdict.CONTINUE),  # before detection, even a certain program goes on
        (0.8, 4, Verdict.SETTLED),  # at detection, exactly the threshold settles
        (0.79, 4, Verdict.CONTINUE),
        (0.9, 5, Verdict.SETTLED),  # a first consult past detection is a check too
        (0.0, 7, Verdict.CONTINUE),  # no hopeless bound set: never cut
    ],
)
def test_threshold_verdicts_around_detection(certaindex: float, steps: int, expected: Verdict) -> None:
    assert once(ThresholdPolicy(settle=0.8, detect_step=4), certaindex, steps) is expected


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
    assert once(policy, certaindex, steps) is expected


def test_threshold_checks_every_consult_every_k_units_or_once() -> None:
    """Certain at steps 6, 9 and 12: every consult stops at 6, checks every 4 units (4, 8, 12)
    stop at 12, a single check at detection never stops."""
    consults = [(0.5, 4), (0.9, 6), (0.5, 8), (0.9, 9), (0.9, 12)]
    every = run(ThresholdPolicy(settle=0.8, detect_step=4), consults)
    assert every.index(Verdict.SETTLED) == 1
    sparse = run(ThresholdPolicy(settle=0.8, detect_step=4, check_every=4), consults)
    assert sparse.index(Verdict.SETTLED) == 4
    once_only = run(ThresholdPolicy(settle=0.8, detect_step=4, check_every=None), consults)
    assert Verdict.SETTLED not in once_only


def test_threshold_every_k_checks_the_first_consult_of_each_stretch() -> None:
    policy = ThresholdPolicy(settle=0.8, detect_step=4, check_every=4)
    # stretches of 4 units from the detection step: [4, 8), [8, 12), [12, 16)
    assert run(policy, [(0.5, 4), (0.9, 7)]) == [Verdict.CONTINUE, Verdict.CONTINUE]
    assert run(policy, [(0.5, 4), (0.5, 5), (0.9, 9)])[-1] is Verdict.SETTLED
    assert run(policy, [(0.5, 4), (0.5, 9), (0.9, 10)])[-1] is Verdict.CONTINUE  # 9 checked [8, 12) already
    # every consult means every one, even two at the same step (a probe after a probe)
    assert run(ThresholdPolicy(settle=0.8, detect_step=1), [(0.3, 5), (0.9, 5)])[-1] is Verdict.SETTLED


def test_threshold_predicted_remaining_follows_certaindex() -> None:
    policy = ThresholdPolicy(settle=0.8, detect_step=4, extra_fraction=0.5)
    fresh = policy.start(20)
    assert fresh.predicted_remaining(0.9, 1) == 3 + 0.5 * 16  # prior before detection
    assert ThresholdPolicy(detect_step=4).start(20).predicted_remaining(0.0, 1) == 19.0  # default prior: the cap
    assert ThresholdPolicy(detect_step=8).start(5).predicted_remaining(0.0, 1) == 4.0  # budget below detection
    going_on = policy.start(12)
    assert going_on.verdict(0.5, 4) is Verdict.CONTINUE
    predictions = [going_on.predicted_remaining(c, 4) for c in (0.0, 0.5, 0.79)]
    assert predictions[0] == 8.0 and predictions[0] > predictions[1] > predictions[2] > 0.0
    settled = policy.start(12)
    assert settled.verdict(0.9, 4) is Verdict.SETTLED and settled.predicted_remaining(0.9, 4) == 0.0


def test_threshold_predictor_and_a_single_check_size_the_job() -> None:
    calibrated = ThresholdPolicy(settle=0.8, detect_step=4, predictor=Curve(a=6.0, b=2.0)).start(16)
    calibrated.verdict(0.5, 4)
    assert calibrated.predicted_remaining(0.5, 4) == pytest.approx(6.0 * math.exp(-1.0))
    assert calibrated.predicted_remaining(0.0, 14) == 2.0  # clipped to what the budget leaves
    decided = ThresholdPolicy(settle=0.8, detect_step=4, check_every=None).start(16)
    decided.verdict(0.5, 4)
    assert decided.predicted_remaining(0.79, 8) == 8.0  # checked once at detection: it runs to the cap


def test_curve_stops_at_the_budget_it_set_at_detection() -> None:
    """a=8, b=3 at certaindex 0.3 gives 8 exp(-0.9) = 3.25 -> 3 more units: a budget of 7 in all,
    held even when certaindex falls (a threshold at ln(8)/3 would go on at certaindex 0)."""
    policy = CurvePolicy(a=8.0, b=3.0, detect_step=4)
    allocation = policy.start(64)
    assert allocation.verdict(0.3, 4) is Verdict.CONTINUE
    assert allocation.predicted_remaining(0.3, 4) == 3.0
    assert allocation.verdict(0.0, 5) is Verdict.CONTINUE
    assert allocation.predicted_remaining(0.0, 5) == 2.0  # the budget set at detection, not the current certaindex
    assert allocation.verdict(0.0, 6) is Verdict.CONTINUE
    assert allocation.verdict(0.0, 7) is Verdict.SETTLED
    assert allocation.predicted_remaining(0.0, 7) == 0.0
    assert run(policy, [(0.3, 4), (0.0, 40)])[-1] is Verdict.SETTLED  # a round that overshoots stops too


def test_dynamic_curve_re_reads_the_budget_at_every_consult() -> None:
    policy = CurvePolicy(a=8.0, b=3.0, detect_step=4, dynamic=True)
    assert run(policy, [(0.3, 4), (1.0, 5)]) == [Verdict.CONTINUE, Verdict.SETTLED]  # 4 + round(0.4) <= 5
    rising = policy.start(64)
    rising.verdict(0.3, 4)
    assert rising.predicted_remaining(0.0, 6) == 4 + 8 - 6  # certaindex fell: the budget grows back
    static = CurvePolicy(a=8.0, b=3.0, detect_step=4)
    assert run(static, [(0.3, 4), (1.0, 5)])[-1] is Verdict.CONTINUE


def test_curve_with_a_settle_threshold_stops_agreeing_programs_at_detection_only() -> None:
    """The refined strategy: certaindex >= settle at the detection step stops there (a bare curve
    at a=8, b=1 would still give 8 exp(-1) = 3 more units); later consults follow the curve alone."""
    policy = CurvePolicy(a=8.0, b=1.0, detect_step=2, settle=0.9)
    assert run(policy, [(1.0, 2)]) == [Verdict.SETTLED]
    assert run(CurvePolicy(a=8.0, b=1.0, detect_step=2), [(1.0, 2)]) == [Verdict.CONTINUE]
    assert run(policy, [(0.5, 2), (1.0, 3)]) == [Verdict.CONTINUE, Verdict.CONTINUE]  # not at detection: the curve rules
    doubtful = policy.start(16)
    doubtful.verdict(0.5, 2)
    assert doubtful.predicted_remaining(0.5, 2) == round(8 * math.exp(-0.5))
    assert policy_from_dict(policy_to_dict(policy)) == policy
    with pytest.raises(ValueError, match="settle: must be a number in"):
        CurvePolicy(a=8.0, b=1.0, settle=1.5)


def test_curve_budget_at_the_cap_leaves_the_stop_to_the_cap() -> None:
    policy = CurvePolicy(a=100.0, b=0.0, detect_step=2)
    assert run(policy, [(0.5, 2), (0.5, 16)], budget=16) == [Verdict.CONTINUE, Verdict.CONTINUE]


def test_curve_hopeless_cut_and_prior_before_detection() -> None:
    curve = CurvePolicy(a=30.0, b=4.0, detect_step=4, hopeless=0.1)
    assert once(curve, 1.0, 3, 64) is Verdict.CONTINUE  # before detection
    assert run(curve, [(0.05, 4), (0.05, 7)]) == [Verdict.CONTINUE, Verdict.CONTINUE]  # hopeless only from step 8
    assert run(curve, [(0.05, 4), (0.05, 8)])[-1] is Verdict.HOPELESS
    assert curve.start(64).predicted_remaining(0.5, 2) == pytest.approx(2 + 30.0 * np.exp(-2.0))


def test_uniform_never_stops_and_predicts_the_cap() -> None:
    allocation = UniformPolicy().start(16)
    assert [allocation.verdict(1.0, s) for s in (4, 8, 12)] == [Verdict.CONTINUE] * 3
    assert allocation.predicted_remaining(1.0, 12) == 4.0


policies = st.one_of(
    st.just(UniformPolicy()),
    st.builds(ThresholdPolicy, settle=st.floats(0.5, 1.0), detect_step=st.integers(1, 10),
              extra_fraction=st.floats(0.0, 1.0), check_every=st.one_of(st.none(), st.integers(1, 6)),
              hopeless=st.one_of(st.none(), st.floats(0.0, 0.4)),
              predictor=st.one_of(st.none(), st.builds(Curve, a=st.floats(0.0, 100.0), b=st.floats(0.0, 10.0)))),
    st.builds(CurvePolicy, a=st.floats(0.0, 1e4), b=st.floats(-5.0, 20.0), detect_step=st.integers(1, 10),
              dynamic=st.booleans(), hopeless=st.one_of(st.none(), st.floats(0.0, 0.4))),
)
consult_lists = st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 4)), min_size=1, max_size=12)


@given(policy=policies, consults=consult_lists, budget=st.integers(1, 64))
def test_predicted_remaining_stays_within_budget(policy: AllocationPolicy, consults: list, budget: int) -> None:
    allocation, steps = policy.start(budget), 0
    for certaindex, advance in consults:
        steps += advance  # a round may overshoot the budget
        verdict = allocation.verdict(certaindex, steps)
        left = allocation.predicted_remaining(certaindex, steps)
        assert 0.0 <= left <= max(budget - steps, 0)
        if verdict is not Verdict.CONTINUE:
            assert left == 0.0
            break


@given(policy=policies, rows=st.lists(consult_lists, min_size=1, max_size=6), budget=st.integers(1, 64))
def test_a_replay_of_whole_rows_stops_where_a_live_program_does(policy: AllocationPolicy, rows: list, budget: int) -> None:
    """decide() over whole recorded rows (what replay uses) against the consult-by-consult
    verdicts a running program gets: a rule that peeks at later consults would differ."""
    width = max(len(r) for r in rows)
    certaindex = np.zeros((len(rows), width))
    steps = np.zeros((len(rows), width), dtype=np.int64)
    live = []
    for i, row in enumerate(rows):
        s = np.cumsum([a for _, a in row])
        padded = row + [row[-1]] * (width - len(row))
        certaindex[i] = [c for c, _ in padded]
        steps[i] = list(s) + [s[-1]] * (width - len(row))
        allocation = policy.start(budget)
        verdicts = [allocation.verdict(c, int(k)) for (c, _), k in zip(row, s)]
        live.append(next((j for j, v in enumerate(verdicts) if v is not Verdict.CONTINUE), None))
    replayed = first_stop(policy.decide(certaindex, steps, np.full(len(rows), budget)))
    for i, row in enumerate(rows):
        if live[i] is not None:
            assert replayed[i] == live[i]
        else:
            assert replayed[i] >= len(row) - 1


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
        ({"check_every": 0}, "check_every"),
        ({"predictor": {"a": 1.0, "b": 1.0}}, "predictor"),
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


def test_curve_fit_of_programs_that_never_needed_more_settles_at_detection() -> None:
    curve = CurvePolicy.fit([0.2, 0.5, 0.9], [0, 0, 0], detect_step=2)
    assert once(curve, 0.0, 2) is Verdict.SETTLED


def test_curve_fit_that_does_not_converge_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="did not converge on 9 points"):
        CurvePolicy.fit([1] * 6 + [0.6, 0.6, 0.25], [0] * 8 + [12])


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
        UniformPolicy(),
        ThresholdPolicy(),
        ThresholdPolicy(settle=0.65, detect_step=6, hopeless=0.15, hopeless_step=20, extra_fraction=0.4),
        ThresholdPolicy(check_every=None, predictor=Curve(a=7.5, b=1.25)),
        ThresholdPolicy(check_every=8),
        CurvePolicy(a=12.5, b=3.25, detect_step=3),
        CurvePolicy(a=12.5, b=3.25, detect_step=3, hopeless=0.05, dynamic=True),
    ],
)
def test_json_round_trip(policy: AllocationPolicy) -> None:
    d = policy_to_dict(policy)
    assert d["kind"] == policy.kind
    assert policy_from_dict(json.loads(json.dumps(d))) == policy


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"settle": 0.8}, "kind"),
        ({"kind": "oracle"}, "kind"),
        ({"kind": "threshold", "settle": 0.8, "treshold": 0.9}, "treshold"),
        ({"kind": "threshold", "detect_step": "4"}, "detect_step"),
        ({"kind": "threshold", "check_every": 0}, "check_every"),
        ({"kind": "threshold", "predictor": {"a": 1.0}}, "predictor.b"),
        ({"kind": "threshold", "predictor": {"a": -1.0, "b": 1.0}}, "predictor.a"),
        ({"kind": "threshold", "predictor": [1, 2]}, "predictor"),
        ({"kind": "curve", "b": 1.0}, "a"),
        ({"kind": "curve", "a": float("nan"), "b": 1.0}, "a"),
        ({"kind": "curve", "a": 1.0, "b": 1.0, "dynamic": "yes"}, "dynamic"),
        ({"kind": "uniform", "budget": 3}, "budget"),
    ],
)
def test_from_dict_names_the_bad_field(d: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        policy_from_dict(d)


def test_policies_written_before_the_new_fields_still_load() -> None:
    old = {"kind": "threshold", "settle": 0.5, "detect_step": 4, "hopeless": None, "hopeless_step": None, "extra_fraction": 0.9}
    assert policy_from_dict(old) == ThresholdPolicy(settle=0.5, detect_step=4, extra_fraction=0.9)
    assert policy_from_dict({"kind": "curve", "a": 1.5, "b": 2.0}) == CurvePolicy(a=1.5, b=2.0)


def test_load_policy_reads_bare_and_calibration_files(tmp_path) -> None:
    threshold, curve = ThresholdPolicy(settle=0.7, detect_step=5), CurvePolicy(a=9.0, b=2.0)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(policy_to_dict(curve)))
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"policy": policy_to_dict(threshold), "curve": policy_to_dict(curve), "report": {}}))
    assert load_policy(bare) == curve
    assert load_policy(calibration) == threshold
    assert load_policy(calibration, which="curve") == curve


def test_shipped_calibrations_load() -> None:
    files = sorted(SHIPPED.glob("*.json"))
    assert files
    for path in files:
        assert isinstance(load_policy(path), ThresholdPolicy)
        assert isinstance(load_policy(path, which="curve"), CurvePolicy)


def test_load_policy_errors_name_file_and_field(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"policy": {"kind": "threshold", "settle": 2}}))
    with pytest.raises(ValueError, match=rf"^{path}: policy: settle:"):
        load_policy(path)
    path.write_text(json.dumps({"policy": {"kind": "threshold"}, "curve": None}))
    with pytest.raises(ValueError, match=rf"^{path}: curve: not written"):
        load_policy(path, which="curve")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{path}: not valid JSON"):
        load_policy(path)
    path.write_text(json.dumps({"report": {}}))
    with pytest.raises(ValueError, match=rf"^{path}: .*'policy'"):
        load_policy(path)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'missing.json'}: cannot read"):
        load_policy(tmp_path / "missing.json")


def test_a_calibration_loads_by_name_as_the_server_and_the_tools_name_it():
    assert isinstance(load_calibration("gsm8k-qwen0.5b:curve", SHIPPED), CurvePolicy)
    assert isinstance(load_calibration("gsm8k-qwen0.5b", SHIPPED), ThresholdPolicy)
    for bad, message in (("../gsm8k-qwen0.5b", "expected NAME or NAME:curve"), ("gsm8k-qwen0.5b:other", "expected NAME or NAME:curve"),
                         ("missing", "no calibration named 'missing'")):
        with pytest.raises(ValueError, match=message):
            load_calibration(bad, SHIPPED)
    with pytest.raises(ValueError, match="no calibration named 'gsm8k-qwen0.5b'"):
        load_calibration("gsm8k-qwen0.5b", None)
