"""Calibration from capped traces: the fit/eval split, the grid search under an accuracy bound, the
hopeless cut, the curve and predictor fits, a fit that fails, and the CLI."""
from __future__ import annotations

import itertools
import json
import math

import pytest

from scheduler_backend.allocation import CurvePolicy, ThresholdPolicy, load_policy, policy_from_dict
from scheduler_backend.calibrate import calibrate, choose_threshold, fit_curve, main, split
from scheduler_backend.replay import build_table, replay
from scheduler_backend.traces import split_of
from tests.unit.synthetic_traces import history_trace, random_sc_traces, sc_trace

BUDGET = 16


def ids(which: str):
    """Trace ids that fall in split `which`, in order."""
    return (f"{which}-{i}" for i in itertools.count() if split_of(f"{which}-{i}") == which)


def easy(trace_id: str = "easy") -> dict:
    """Right from the first step, and certain from the second."""
    return history_trace(trace_id, ["42"] * BUDGET, [0.3] + [1.0] * (BUDGET - 1))


def hard(trace_id: str = "hard") -> dict:
    """Never settles: the answer flips until the last step, which is right; certaindex stays middling."""
    answers = ["41" if i % 2 else "43" for i in range(BUDGET - 1)] + ["42"]
    return history_trace(trace_id, answers, [0.3 + 0.2 * (i % 3) / 2 for i in range(BUDGET)])


def impossible(trace_id: str = "impossible") -> dict:
    """Wrong whatever the compute; certaindex stays very low."""
    return history_trace(trace_id, [str(100 + i) for i in range(BUDGET)], [0.05] * BUDGET)


def test_split_is_stable_and_about_half() -> None:
    names = [f"gsm8k-test-{i}" for i in range(2000)]
    halves = [split_of(n) for n in names]
    assert halves == [split_of(n) for n in names] and set(halves) == {"fit", "eval"}
    assert 0.45 < halves.count("fit") / len(halves) < 0.55
    assert split_of(7) == split_of("7")  # ids are read as text, whatever JSON type they had


def test_calibration_never_sees_its_evaluation_questions() -> None:
    """Whatever the eval questions hold, the chosen policies are the same; only the report moves."""
    traces = random_sc_traces(60, seed=3)
    scrambled = [t if split_of(t["id"]) == "fit" else sc_trace(t["id"], ["7"] * BUDGET, [500] * BUDGET) for t in traces]
    a, b = calibrate(traces, orderings=3), calibrate(scrambled, orderings=3)
    assert a["policy"] == b["policy"] and a["curve"] == b["curve"]
    assert a["report"]["rows"] != b["report"]["rows"]
    halves = split(traces)
    assert a["split"]["fit"] == len(halves["fit"]) and a["report"]["programs"] == len(halves["eval"]) > 0


def test_threshold_saves_tokens_on_easy_programs_without_losing_accuracy() -> None:
    table = build_table([easy(f"e{i}") for i in range(10)] + [hard(f"h{i}") for i in range(10)])
    policy, result = choose_threshold(table, max_accuracy_drop=0.01)
    assert result.correct.all()
    # Easy programs stop after 2 of 16 steps; hard ones must run to the cap to be right.
    assert result.steps.tolist() == [2] * 10 + [BUDGET] * 10
    assert 0.5 < policy.settle <= 1.0 and policy.detect_step <= 2
    assert policy.extra_fraction == pytest.approx(0.5, abs=0.1)  # half the programs run on after detection


def test_hopeless_cut_only_when_allowed() -> None:
    table = build_table([easy(f"e{i}") for i in range(10)] + [hard(f"h{i}") for i in range(10)]
                        + [impossible(f"i{i}") for i in range(10)])
    with_cut, cut_result = choose_threshold(table, 0.01, hopeless=True)
    without, plain_result = choose_threshold(table, 0.01, hopeless=False)
    assert with_cut.hopeless is not None and without.hopeless is None
    assert cut_result.correct.sum() == plain_result.correct.sum() == 20
    assert cut_result.tokens.sum() < plain_result.tokens.sum() - 0.1 * plain_result.tokens.sum()


def test_accuracy_drop_bound_trades_accuracy_for_tokens() -> None:
    """A settle threshold of 0.6 at step 2 is right for 49 programs and wrong for one (2%)."""
    medium = [history_trace(f"m{i}", ["42"] * BUDGET, [0.3, 0.6] + [0.7] * (BUDGET - 2)) for i in range(49)]
    fooled = history_trace("f", ["7", "7"] + ["42"] * (BUDGET - 2), [0.3, 0.6] + [0.7] * (BUDGET - 2))
    table = build_table(medium + [fooled])
    _, strict = choose_threshold(table, max_accuracy_drop=0.0)
    _, loose = choose_threshold(table, max_accuracy_drop=0.05)
    assert strict.correct.mean() == 1.0 and loose.correct.mean() == pytest.approx(0.98)
    assert loose.tokens.sum() < strict.tokens.sum()


def settling(count: int, budget: int = 32, detect: int = 2) -> list[dict]:
    """Traces whose answer settles 20 * exp(-3 c) steps after detection at certaindex c."""
    traces = []
    for k in range(count):
        c = k / (count - 1)
        settle_step = detect + round(20 * math.exp(-3 * c))
        answers = ["9" if i + 1 < settle_step else "42" for i in range(budget)]
        traces.append(history_trace(f"s{k}", answers, [c if i + 1 < settle_step else 1.0 for i in range(budget)]))
    return traces


def test_curve_is_fitted_to_the_steps_until_the_answer_settled() -> None:
    curve = fit_curve(build_table(settling(60)), detect_step=2)
    assert curve.a == pytest.approx(20, rel=0.15) and curve.b == pytest.approx(3, rel=0.15)
    assert curve.detect_step == 2


def test_threshold_predictor_tracks_what_programs_still_spent() -> None:
    doc = calibrate(settling(120), orderings=1)
    predictor = doc["policy"]["predictor"]
    assert predictor is not None and predictor["b"] > 0  # less certain programs ran longer
    policy = threshold_of(doc)
    allocation = policy.start(32)
    allocation.verdict(0.0, policy.detect_step)
    low = allocation.predicted_remaining(0.0, policy.detect_step)
    assert low > allocation.predicted_remaining(0.5, policy.detect_step) > 0


def threshold_of(doc: dict) -> ThresholdPolicy:
    policy = policy_from_dict(doc["policy"])
    assert isinstance(policy, ThresholdPolicy)
    return policy


def failing_fit_traces() -> list[dict]:
    """Nine fit-split programs that give the curve fit exactly (certaindex at detection, steps
    still needed) = ([1] * 6 + [0.6, 0.6, 0.25], [0] * 8 + [12]), which does not converge; and a
    few eval-split ones to report on."""
    fit, held_out = ids("fit"), ids("eval")
    traces = [history_trace(next(fit), ["42"] * 13, [1.0] * 13) for _ in range(6)]
    traces += [history_trace(next(fit), ["42"] * 13, [0.6] * 13) for _ in range(2)]
    traces.append(history_trace(next(fit), [str(i) for i in range(12)] + ["42"], [0.25] * 13))
    traces += [history_trace(next(held_out), ["42"] * 13, [1.0] * 13) for _ in range(3)]
    return traces


def test_a_curve_that_cannot_be_fitted_is_reported_and_the_threshold_still_written(tmp_path, capsys) -> None:
    traces = failing_fit_traces()
    table = build_table(split(traces)["fit"])
    with pytest.raises(ValueError, match="did not converge"):
        fit_curve(table, detect_step=1)
    path, out = tmp_path / "traces.jsonl", tmp_path / "calibration.json"
    path.write_text("".join(json.dumps(t) + "\n" for t in traces))
    assert main([str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "curve not fitted (curve fit did not converge" in printed and f"wrote {out}" in printed
    doc = json.loads(out.read_text())
    assert doc["curve"] is None and any("curve not fitted" in note for note in doc["notes"])
    threshold = load_policy(out)
    assert isinstance(threshold, ThresholdPolicy) and threshold.detect_step == 1
    with pytest.raises(ValueError, match="curve: not written"):
        load_policy(out, which="curve")
    assert [r["accuracy"] for r in doc["report"]["rows"]][:2] == [1.0, 1.0]


def test_main_writes_a_calibration_the_server_can_load(tmp_path, capsys) -> None:
    traces_path, out = tmp_path / "traces.jsonl", tmp_path / "calibration.json"
    traces_path.write_text("".join(json.dumps(t) + "\n" for t in random_sc_traces(40, seed=9)))
    assert main([str(traces_path), "-o", str(out), "--orderings", "2"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert f"fit on {doc['split']['fit']} programs, reported on {doc['split']['eval']} held-out" in printed
    assert "run to cap" in printed
    assert set(doc) == {"program", "policy", "curve", "split", "report", "notes"} and doc["program"] == "self-consistency"
    assert isinstance(load_policy(out), ThresholdPolicy)
    assert isinstance(load_policy(out, which="curve"), CurvePolicy)
    cap = doc["report"]["rows"][0]
    assert cap["allocation"] == "run to cap" and cap["saved"] == 0.0


def test_main_reports_bad_traces_by_file_line_and_field(tmp_path, capsys) -> None:
    path = tmp_path / "traces.jsonl"
    bad = easy("x")
    bad["history"][3]["certaindex"] = "high"
    path.write_text(json.dumps(easy()) + "\n" + json.dumps(bad) + "\n")
    assert main([str(path), "-o", str(tmp_path / "c.json")]) == 2
    assert f"{path}:2: history[3].certaindex" in capsys.readouterr().err
    no_id = easy()
    del no_id["id"]
    path.write_text(json.dumps(no_id) + "\n")
    assert main([str(path), "-o", str(tmp_path / "c.json")]) == 2
    assert f"{path}:1: id:" in capsys.readouterr().err
    fit = ids("fit")
    path.write_text(json.dumps(easy(next(fit))) + "\n" + json.dumps(history_trace(next(fit), ["1"], [0.5], program="rebase")) + "\n")
    assert main([str(path), "-o", str(tmp_path / "c.json")]) == 2
    assert "--program" in capsys.readouterr().err
    assert main([str(path), "-o", str(tmp_path / "c.json"), "--program", "mcts"]) == 0
    assert not (tmp_path / "missing.jsonl").exists()
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_replay_of_the_chosen_policy_matches_the_report() -> None:
    traces = random_sc_traces(50, seed=4)
    doc = calibrate(traces, orderings=2)
    table = build_table(split(traces)["eval"], 2)
    result = replay(table, threshold_of(doc))
    row = doc["report"]["rows"][1]
    assert row["accuracy"] == pytest.approx(result.correct.mean()) and row["tokens_per_question"] == pytest.approx(result.tokens.mean())
