"""Trace replay: a hand-made pair of questions whose every curve point is worked out by hand, the
vectorized certaindex and vote against the project's own, sample orderings, history replay, and
the trade-off sweeps with their Table 4 analogue."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from benchmarks.bench_batch import main as bench_batch
from client.replay import main as replay_main
from scheduler_backend.allocation import CurvePolicy, ThresholdPolicy, UniformPolicy
from scheduler_backend.answers import majority_answer
from scheduler_backend.certaindex import entropy_certaindex
from scheduler_backend.errors import RequestError
from scheduler_backend.replay import (
    build_table,
    by_length,
    capped,
    oracle,
    orderings_of,
    per_ordering,
    replay,
    settled_column,
    uniform,
)
from scheduler_backend.tradeoffs import NEAR, Point, Sweep, analyse, point, reach, tokens_at, transfer
from tests.unit.synthetic_traces import history_trace, random_sc_traces, sc_trace


def hand_made(orderings: int = 1, round_size: int | None = None):
    """Question a: 7, 42, 42, 42 (10, 20, 30, 40 tokens); question b: 1, 2, 42, 3 (50 each);
    gold 42, recorded in a first round of 2 and rounds of 2."""
    traces = [sc_trace("a", ["7", "42", "42", "42"], [10, 20, 30, 40], detect_step=2, round_size=2),
              sc_trace("b", ["1", "2", "42", "3"], [50, 50, 50, 50], detect_step=2, round_size=2)]
    return build_table(traces, orderings, round_size=round_size)


def mean(table, result) -> tuple[float, float]:
    return float(per_ordering(table, result.tokens).mean()), float(per_ordering(table, result.correct).mean())


def test_uniform_budgets_of_the_hand_made_pair() -> None:
    """A tie goes to the answer seen first: a is wrong until its third sample, b always."""
    table = hand_made()
    assert [mean(table, uniform(table, b)) for b in (1, 2, 3, 4)] == [(30.0, 0.0), (65.0, 0.0), (105.0, 0.5), (150.0, 0.5)]


def test_certaindex_of_the_hand_made_pair() -> None:
    table = hand_made()
    # a: {7, 42} -> 0; {7, 42, 42} -> 1 - H(1/3, 2/3) / ln 3; {7, 42 x 3} -> 1 - H(1/4, 3/4) / ln 4
    h3 = -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3))
    h4 = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert table.certaindex[0] == pytest.approx([0.0, 0.0, 1 - h3 / np.log(3), 1 - h4 / np.log(4)])
    assert table.certaindex[1] == pytest.approx([0.0] * 4)


def test_policies_on_the_hand_made_pair() -> None:
    table = hand_made()
    # consults at 2 and 4: a is uncertain at 2 (0), so both run to the cap
    assert mean(table, replay(table, ThresholdPolicy(settle=0.5, detect_step=2))) == (150.0, 0.5)
    # a first round of 3: a's certaindex 0.42 >= 0.4 stops it at 60 tokens, right; b runs on
    assert mean(table, replay(table, ThresholdPolicy(settle=0.4, detect_step=3))) == (130.0, 0.5)
    # both look hopeless at 2 and are cut there, wrong
    cut = ThresholdPolicy(settle=0.9, detect_step=2, hopeless=0.1, hopeless_step=2)
    assert mean(table, replay(table, cut)) == (65.0, 0.0)
    assert mean(table, replay(table, UniformPolicy())) == (150.0, 0.5)


def test_curve_budget_needs_rounds_small_enough_to_stop_inside() -> None:
    """Curve 1 (b = 0) gives every program 2 + 1 = 3 samples: in rounds of 1 both stop at 3; in the
    recorded rounds of 2 the next consult is the cap."""
    curve = CurvePolicy(a=1.0, b=0.0, detect_step=2)
    fine = hand_made(round_size=1)
    assert mean(fine, replay(fine, curve)) == (105.0, 0.5)
    assert mean(hand_made(), replay(hand_made(), curve)) == (150.0, 0.5)


def test_references_on_the_hand_made_pair() -> None:
    table = hand_made()
    assert mean(table, oracle(table, 4)) == (55.0, 0.5)  # a stops at 3 samples (right from there), b at 1
    assert mean(table, oracle(table, 2)) == (30.0, 0.0)
    # at 2 samples a averages 15 tokens, b 50: a bound of 25 stops a only, 50 stops both
    assert mean(table, by_length(table, 25.0)) == (115.0, 0.0)
    assert mean(table, by_length(table, 50.0)) == (65.0, 0.0)


def test_orderings_reorder_the_same_samples() -> None:
    table = hand_made(orderings=6)
    assert table.rows == 12 and table.orderings == 6
    assert list(table.certaindex[0]) == list(hand_made().certaindex[0])  # ordering 0 is the recorded one
    full = uniform(table, 4)
    assert set(full.tokens[table.ordering >= 0].tolist()) == {100.0, 200.0}  # every ordering pays for all samples
    assert point(table, 4, full) == Point(4, 150.0, 0.0, 0.5, 0.0)
    early = point(table, 1, uniform(table, 1))
    assert early.tokens_std > 0  # a's first sample differs between orderings
    perms = orderings_of(sc_trace("a", ["7", "42", "42", "42"], [10, 20, 30, 40]), 6)
    assert sorted(map(tuple, perms)) == sorted(map(tuple, orderings_of(sc_trace("a", ["1"] * 4, [1] * 4), 6)))  # keyed by id
    assert all(sorted(p) == [0, 1, 2, 3] for p in perms)


def test_fresh_draws_vary_where_reorderings_of_the_same_samples_cannot() -> None:
    """At the cap every reordering votes over the same samples, so a live run's spread (it draws
    new ones) would look like none; draws with replacement from the recorded answers do vary."""
    traces = [sc_trace(f"q{i}", ["42", "7"] * 4 + ["42"], [10] * 9) for i in range(6)]
    shuffled = build_table(traces, 20)
    drawn = build_table(traces, 20, draws=True)
    assert per_ordering(shuffled, uniform(shuffled, 9).correct).std() == 0.0
    assert per_ordering(drawn, uniform(drawn, 9).correct).std() > 0.05
    rows = orderings_of(traces[0], 20, draws=True)
    assert (rows == orderings_of(traces[0], 20, draws=True)).all()  # seeded
    assert any(len(set(r)) < 9 for r in rows) and rows.min() >= 0 and rows.max() <= 8  # with replacement


def test_a_capped_table_is_the_first_samples_of_each_ordering() -> None:
    table = hand_made(orderings=4)
    small = capped(table, 2)
    assert small.steps.shape[1] == 2 and set(small.budget.tolist()) == {2}
    assert mean(small, uniform(small, 2)) == mean(table, uniform(table, 2))
    assert mean(small, oracle(small, 2)) == mean(table, oracle(table, 2))
    with pytest.raises(RequestError, match="budget: must be in \\[1, 4\\]"):
        capped(table, 5)


def test_transfer_counts_losses_and_gains_on_the_same_samples() -> None:
    """Stopping at 2 samples: a is right at its cap and wrong at 2 (lost), b the other way round
    (gained), c right throughout; 20 of 50 tokens spent."""
    traces = [sc_trace("a", ["7", "7", "42", "42", "42"], [10] * 5, detect_step=2, round_size=1),
              sc_trace("b", ["42", "42", "7", "7", "7"], [10] * 5, detect_step=2, round_size=1),
              sc_trace("c", ["42"] * 5, [10] * 5, detect_step=2, round_size=1)]
    t = transfer(build_table(traces, 1), ThresholdPolicy(settle=0.0, detect_step=2))
    assert (t.questions, t.orderings) == (3, 1)
    assert t.tokens_ratio == pytest.approx(0.4) and t.tokens_ratio_max == pytest.approx(0.4)
    assert t.lost_per_16 == pytest.approx(16 / 3) and t.gained_per_16 == pytest.approx(16 / 3)
    assert t.accuracy_uniform == pytest.approx(2 / 3) and t.accuracy_policy == pytest.approx(2 / 3)
    never = transfer(build_table(traces, 1), UniformPolicy())
    assert (never.tokens_ratio, never.lost_per_16, never.gained_per_16) == (1.0, 0.0, 0.0)


def test_vectorized_certaindex_and_vote_are_the_projects_own() -> None:
    traces = random_sc_traces(12, seed=5)
    table = build_table(traces, orderings=3)
    row = 0
    for trace in traces:
        answers = [s["answer"] for s in trace["samples"]]
        for perm in orderings_of(trace, 3):
            ordered = [answers[i] for i in perm]
            for n in range(1, len(ordered) + 1):
                assert table.certaindex[row, n - 1] == pytest.approx(entropy_certaindex(ordered[:n]), abs=1e-12)
                winner = majority_answer(ordered[:n])[0]
                assert bool(table.correct[row, n - 1]) == (winner == trace["gold"])
            row += 1


def test_without_gold_the_answer_the_ordering_ends_on_counts_as_right() -> None:
    table = build_table([sc_trace("c", ["3", "5", "5"], [1, 1, 1], gold=None, detect_step=1, round_size=1)], 1)
    assert table.correct[0].tolist() == [False, False, True]
    trace = sc_trace("c", ["3", "5", "5"], [1, 1, 1], gold=None, detect_step=1, round_size=1)
    trace["correct"] = False
    assert build_table([trace], 1).correct[0].tolist() == [False, False, False]


def test_settled_column_is_where_the_answer_stops_changing() -> None:
    table = hand_made()
    assert settled_column(table, np.arange(4)).tolist() == [2, 0]  # a: 7, 7 (tie), 42, 42; b: 1 throughout
    assert settled_column(table, np.array([1, 3])).tolist() == [1, 0]


def test_history_programs_replay_along_their_history() -> None:
    easy = history_trace("e", ["42"] * 8, [0.3] + [1.0] * 7)
    hard = history_trace("h", ["41", "43"] * 3 + ["41", "42"], [0.4] * 8)
    table = build_table([easy, hard])
    assert not table.per_sample and table.rows == 2
    result = replay(table, ThresholdPolicy(settle=0.9, detect_step=1))
    assert result.steps.tolist() == [2, 8] and result.tokens.tolist() == [200.0, 800.0]
    assert result.correct.tolist() == [True, True]
    assert uniform(table, 3).correct.tolist() == [True, False]
    assert oracle(table, 8).steps.tolist() == [1, 8]


def test_a_table_holds_one_program() -> None:
    with pytest.raises(RequestError, match="several programs"):
        build_table([history_trace("x", ["1"], [0.5]), history_trace("y", ["1"], [0.5], program="rebase")])


def test_tokens_at_interpolates_to_the_target() -> None:
    points = [Point(1, 30.0, 0, 0.0, 0), Point(2, 65.0, 0, 0.0, 0), Point(3, 105.0, 0, 0.5, 0), Point(4, 150.0, 0, 0.5, 0)]
    assert tokens_at(points, 0.5) == 105.0
    assert tokens_at(points, 0.25) == pytest.approx(85.0)
    assert tokens_at(points, 0.6) is None
    assert tokens_at(points[2:], 0.1) == 105.0


def test_reach_is_relative_to_uniform_and_oracle() -> None:
    def sweep(name: str, pairs: list[tuple[float, float]]) -> Sweep:
        return Sweep(name, "k", tuple(Point(i, t, 0.0, a, 0.0) for i, (t, a) in enumerate(pairs)))

    target, rows = reach([sweep("uniform", [(100, 0.5), (200, 0.8), (400, 0.7)]), sweep("oracle", [(50, 0.8)]),
                          sweep("threshold", [(100, 0.6), (150, 0.8)]), sweep("flat", [(10, 0.1)])])
    assert target == 0.8
    by_name = {r.name: r for r in rows}
    assert (by_name["uniform"].tokens, by_name["uniform"].vs_uniform, by_name["uniform"].vs_oracle) == (200, 1.0, 4.0)
    assert (by_name["threshold"].vs_uniform, by_name["threshold"].vs_oracle) == (0.75, 3.0)
    assert by_name["flat"].tokens is None and by_name["flat"].best_accuracy == 0.1


def test_sweeps_on_synthetic_traces_keep_their_invariants() -> None:
    analysis = analyse(random_sc_traces(80, seed=2), "eval", orderings=4, round_size=4)
    sweeps = {s.name: s for s in analysis.sweeps}
    assert {"uniform", "threshold", "threshold, once at detection", "threshold, every 8", "curve", "curve, dynamic",
            "output length", "oracle"} <= set(sweeps)
    for u, o in zip(sweeps["uniform"].points, sweeps["oracle"].points):
        assert o.accuracy == pytest.approx(u.accuracy) and o.tokens <= u.tokens  # the oracle costs no accuracy
    at_detection = sweeps["uniform"].points[analysis.detect_step - 1]
    settle_zero = sweeps["threshold"].points[0]  # settle 0: every program stops at detection
    assert (settle_zero.tokens, settle_zero.accuracy) == pytest.approx((at_detection.tokens, at_detection.accuracy))
    by_name = {r.name: r for r in analysis.reach}
    assert by_name["uniform"].vs_uniform == 1.0 and by_name["oracle"].vs_oracle == 1.0
    assert analysis.near[0].tokens <= analysis.reach[0].tokens and NEAR > 0


def test_replay_command_prints_the_table_and_draws_the_plot(tmp_path, capsys) -> None:
    path, png = tmp_path / "traces.jsonl", tmp_path / "plots" / "tradeoffs.png"
    path.write_text("".join(json.dumps(t) + "\n" for t in random_sc_traces(40, seed=6)))
    assert replay_main([str(path), "--plot", str(png), "--orderings", "3", "--round-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "eval split" in printed and "first round 4 then rounds of 4" in printed
    assert "tokens per question to reach uniform's best accuracy" in printed and "oracle" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert replay_main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bench_batch_writes_every_plot_and_the_markdown(tmp_path, capsys) -> None:
    traces, out = tmp_path / "traces", tmp_path / "results"
    traces.mkdir()
    (traces / "gsm8k-synthetic.jsonl").write_text("".join(json.dumps(t) + "\n" for t in random_sc_traces(40, seed=7)))
    mixed = [history_trace(f"m{i}", ["42"] * 6, [0.2 * (i % 5)] * 6) for i in range(12)]
    mixed += [history_trace(f"r{i}", ["41", "42"] * 4, [0.5] * 8, program="rebase") for i in range(12)]
    (traces / "trees.jsonl").write_text("".join(json.dumps(t) + "\n" for t in mixed))
    (traces / "unseen.jsonl").write_text("".join(json.dumps(t) + "\n" for t in random_sc_traces(40, seed=8)))
    assert bench_batch([f"--traces={traces}", f"--out={out}", "--orderings=2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["gsm8k-synthetic.png", "trees-mcts.png", "trees-rebase.png", "unseen.png"]
    markdown = (out / "batch.md").read_text()
    assert markdown.count("### ") == 6 and "![gsm8k-synthetic](gsm8k-synthetic.png)" in markdown
    assert "### Certaindex against correctness (Figure 3)" in markdown
    assert re.search(r"\| trees-rebase \| rebase \| 12 \| 96 \|", markdown), "one row per program of each file"
    assert "### The default allocations on questions they were not fitted on, at budgets 8 and 16" in markdown
    assert re.search(r"\| unseen \| `gsm8k-qwen0\.5b:curve` \| 8 \| 40 \|", markdown)
    # fitted on GSM8K: only the eval half of a GSM8K file is held out
    assert "| gsm8k-synthetic (eval half) |" in markdown and "| gsm8k-synthetic | `" not in markdown
    printed = capsys.readouterr().out
    assert "== headline: self-consistency on gsm8k-synthetic, eval split" in printed
    assert "on unseen (40 questions, not fitted on), budget 8" in printed
    assert bench_batch([f"--traces={tmp_path / 'none'}", f"--out={out}"]) == 1
