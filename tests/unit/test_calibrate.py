"""Calibration from capped traces: replay, the grid search under an accuracy bound, the curve fit,
and the CLI."""
from __future__ import annotations

import json
import math
import random

import pytest

from scheduler_backend.allocation import CurvePolicy, ThresholdPolicy, load_policy
from scheduler_backend.calibrate import _Table, calibrate, correctness, fit_curve, main, replay, settle_index

BUDGET = 16
TOKENS_PER_STEP = 100


def make_trace(answers: list[str | None], certaindex: list[float], gold: str | None = "42",
               correct: bool | None = None, program: str = "self-consistency") -> dict:
    history = [{"steps": i + 1, "certaindex": c, "answer": a, "tokens_used": TOKENS_PER_STEP * (i + 1)}
               for i, (a, c) in enumerate(zip(answers, certaindex))]
    return {"program": program, "question": "q", "gold": gold, "budget": len(answers), "history": history,
            "correct": correct}


def easy() -> dict:
    """Right from the first sample, and certain from the second."""
    return make_trace(["42"] * BUDGET, [0.3] + [1.0] * (BUDGET - 1))


def hard() -> dict:
    """Never settles: the answer flips until the last step, which is right; certaindex stays middling."""
    answers = ["41" if i % 2 else "43" for i in range(BUDGET - 1)] + ["42"]
    return make_trace(answers, [0.3 + 0.2 * (i % 3) / 2 for i in range(BUDGET)])


def impossible() -> dict:
    """Wrong whatever the compute; certaindex stays very low."""
    return make_trace([str(100 + i) for i in range(BUDGET)], [0.05] * BUDGET)


def test_replay_stops_where_the_policy_says() -> None:
    trace = easy()
    assert replay(trace, ThresholdPolicy(settle=0.9, detect_step=1)) == (1, "42", 2 * TOKENS_PER_STEP)
    assert replay(trace, ThresholdPolicy(settle=0.9, detect_step=5)) == (4, "42", 5 * TOKENS_PER_STEP)
    never = ThresholdPolicy(settle=1.0, detect_step=BUDGET + 1)
    assert replay(hard(), never) == (BUDGET - 1, "42", BUDGET * TOKENS_PER_STEP)
    cut = ThresholdPolicy(settle=0.9, detect_step=2, hopeless=0.1, hopeless_step=6)
    assert replay(impossible(), cut)[0] == 5


def test_vectorized_grid_replay_agrees_with_replay() -> None:
    rng = random.Random(3)
    traces = []
    for _ in range(40):
        n = rng.randint(1, 12)
        traces.append(make_trace([str(rng.randint(0, 3)) for _ in range(n)], [round(rng.random(), 2) for _ in range(n)]))
    table = _Table.build(traces)
    for _ in range(200):
        settle = round(rng.uniform(0.2, 1.0), 2)
        detect = rng.randint(1, 12)
        hopeless = round(rng.uniform(0.0, settle - 0.01), 2) if rng.random() < 0.5 else None
        policy = ThresholdPolicy(settle=settle, detect_step=detect, hopeless=hopeless)
        assert list(table.stops(policy)) == [replay(t, policy)[0] for t in traces], policy


def test_settle_index_is_where_the_answer_stops_changing() -> None:
    assert settle_index(make_trace(["1", "2", "2", "3", "3", "3"], [0.0] * 6)) == 3
    assert settle_index(make_trace(["3", "3.0", "3"], [0.0] * 3)) == 0  # equal by value
    assert settle_index(make_trace(["1", None, None], [0.0] * 3)) == 1
    assert settle_index(make_trace(["1", "2"], [0.0] * 2)) == 1


def test_accuracy_without_gold_is_agreement_with_the_final_answer() -> None:
    assert correctness(make_trace(["1", "2", "2"], [0.0] * 3, gold=None)) == [False, True, True]
    assert correctness(make_trace(["1", "2", "2"], [0.0] * 3, gold=None, correct=False)) == [False] * 3
    assert correctness(make_trace(["1", "2", None], [0.0] * 3, gold="1")) == [True, False, False]


def test_calibrate_saves_tokens_on_easy_programs_without_losing_accuracy() -> None:
    traces = [easy() for _ in range(10)] + [hard() for _ in range(10)]
    doc = calibrate(traces, max_accuracy_drop=0.01)
    report, policy = doc["report"], doc["policy"]
    assert report["programs"] == 20
    assert report["accuracy_cap"] == report["accuracy_policy"] == 1.0
    # Easy programs stop after 2 of 16 steps; hard ones must run to the cap to be right.
    assert report["tokens_saved_fraction"] == pytest.approx(1 - (10 * 2 + 10 * BUDGET) / (20 * BUDGET))
    assert policy["kind"] == "threshold" and 0.5 < policy["settle"] <= 1.0 and policy["detect_step"] <= 2
    chosen = ThresholdPolicy(**{k: v for k, v in policy.items() if k != "kind"})
    assert replay(hard(), chosen)[0] == BUDGET - 1
    assert policy["extra_fraction"] == pytest.approx(0.5, abs=0.1)  # half the programs run on after detection


def test_calibrate_cuts_hopeless_programs_only_when_allowed() -> None:
    traces = [easy() for _ in range(10)] + [hard() for _ in range(10)] + [impossible() for _ in range(10)]
    with_cut = calibrate(traces, hopeless=True)
    without = calibrate(traces, hopeless=False)
    assert with_cut["policy"]["hopeless"] is not None and without["policy"]["hopeless"] is None
    assert with_cut["report"]["accuracy_policy"] == with_cut["report"]["accuracy_cap"]
    assert with_cut["report"]["tokens_saved_fraction"] > without["report"]["tokens_saved_fraction"] + 0.1


def test_accuracy_drop_bound_trades_accuracy_for_tokens() -> None:
    """A settle threshold of 0.6 at step 2 is right for 49 programs and wrong for one (2%)."""
    medium = make_trace(["42"] * BUDGET, [0.3, 0.6] + [0.7] * (BUDGET - 2))
    fooled = make_trace(["7", "7"] + ["42"] * (BUDGET - 2), [0.3, 0.6] + [0.7] * (BUDGET - 2))
    traces = [medium] * 49 + [fooled]
    strict = calibrate(traces, max_accuracy_drop=0.0)
    loose = calibrate(traces, max_accuracy_drop=0.05)
    assert strict["report"]["accuracy_policy"] == 1.0
    assert loose["report"]["accuracy_policy"] == pytest.approx(0.98)
    assert loose["report"]["tokens_saved_fraction"] > strict["report"]["tokens_saved_fraction"]


def test_calibrate_fits_the_curve_of_steps_to_settle() -> None:
    """Traces whose answer settles 20 * exp(-3 c) steps after detection at certaindex c."""
    budget, detect = 32, 2
    traces = []
    for k in range(60):
        c = k / 59
        settle_step = detect + round(20 * math.exp(-3 * c))
        answers = ["9" if i + 1 < settle_step else "42" for i in range(budget)]
        cert = [c if i + 1 < settle_step else 1.0 for i in range(budget)]
        traces.append(make_trace(answers, cert))
    curve = fit_curve(traces, detect_step=detect)
    assert curve.a == pytest.approx(20, rel=0.15) and curve.b == pytest.approx(3, rel=0.15)
    doc = calibrate(traces)
    assert doc["curve"]["kind"] == "curve" and doc["curve"]["detect_step"] == doc["policy"]["detect_step"]
    assert doc["report"]["tokens_saved_fraction_curve"] > 0


def test_main_writes_a_calibration_the_server_can_load(tmp_path, capsys) -> None:
    traces_path, out = tmp_path / "traces.jsonl", tmp_path / "calibration.json"
    traces_path.write_text("\n".join(json.dumps(t) for t in [easy()] * 5 + [hard()] * 5) + "\n")
    assert main([str(traces_path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "run to cap" in printed and "10 programs" in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {"policy", "curve", "report"}
    assert isinstance(load_policy(out), ThresholdPolicy)
    assert isinstance(load_policy(out, which="curve"), CurvePolicy)


def test_main_reports_bad_traces_by_file_line_and_field(tmp_path, capsys) -> None:
    path = tmp_path / "traces.jsonl"
    bad = easy()
    bad["history"][3]["certaindex"] = "high"
    path.write_text(json.dumps(easy()) + "\n" + json.dumps(bad) + "\n")
    assert main([str(path), "-o", str(tmp_path / "c.json")]) == 2
    assert f"{path}:2: history[3].certaindex" in capsys.readouterr().err
    path.write_text(json.dumps(easy()) + "\n" + json.dumps(make_trace(["1"], [0.5], program="mcts")) + "\n")
    assert main([str(path), "-o", str(tmp_path / "c.json")]) == 2
    assert "--program" in capsys.readouterr().err
    assert main([str(path), "-o", str(tmp_path / "c.json"), "--program", "self-consistency"]) == 0
    assert not (tmp_path / "missing.jsonl").exists()
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
