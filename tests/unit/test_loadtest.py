"""The load test's own logic: Poisson pacing, the baseline's client-side vote at the deadline, and
the per-class SLO summary (attainment, goodput, percentiles, accuracy, tokens)."""
from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from engines.policy_stream import SampleAccumulator
from loadtest.slo import (
    ProgramRecord,
    format_summary,
    percentile,
    poisson_gap,
    program_deadline,
    summarize,
    summary_json,
)
from scheduler_backend.engine import SampleDelta


def test_gaps_make_one_poisson_process_of_the_target_rate_across_users() -> None:
    rng = random.Random(7)
    users, rate = 4, 2.0
    gaps = [poisson_gap(rate, users, rng) for _ in range(20000)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(users / rate, rel=0.03), "each user runs at rate / users"
    assert statistics.stdev(gaps) == pytest.approx(mean, rel=0.05), "exponential: sd equals the mean"
    assert all(g >= 0 for g in gaps)
    assert statistics.fmean(poisson_gap(rate, 0, rng) for _ in range(5000)) == pytest.approx(1 / rate, rel=0.06)
    with pytest.raises(ValueError, match="program_rate"):
        poisson_gap(0.0, 1, rng)


def test_deadline_is_scale_times_base() -> None:
    assert program_deadline(1.5, 20.0) == 30.0
    with pytest.raises(ValueError, match="slo_scale"):
        program_deadline(0.0, 20.0)
    with pytest.raises(ValueError, match="base_deadline_s"):
        program_deadline(1.0, math.inf)


def test_the_baseline_votes_over_finished_samples_only() -> None:
    acc = SampleAccumulator()
    acc.add([SampleDelta(0, "so \\boxed{", 3), SampleDelta(1, "it is \\boxed{5}", 4, True, "stop"),
             SampleDelta(2, "\\boxed{7}", 2, True, "stop")])
    acc.add([SampleDelta(0, "7}", 1, True, "stop"), SampleDelta(3, "\\boxed{5} but then", 5)])
    assert acc.tokens == 15 and acc.finished == 3
    assert acc.answer() == "7", "sample 3 has not finished: its 5 does not count"
    acc.add([SampleDelta(3, " more", 1, True, "length")])
    assert acc.answer() == "7", "a sample cut at its length keeps its boxed answer; 7 came first in a tie of 2 and 2"
    acc.add([SampleDelta(4, "\\boxed{5.0}", 1, True, "stop")])
    assert acc.answer() == "5", "answers compare by value"
    assert SampleAccumulator().answer() is None


def test_a_length_cut_sample_without_a_marker_gives_no_answer() -> None:
    acc = SampleAccumulator()
    acc.add([SampleDelta(0, "first 3 then 4", 4, True, "length")])
    assert acc.answer() is None


def record(cls: str = "A", latency: float = 1.0, answer: str | None = "1", correct: bool = True, tokens: int = 10, **kw) -> ProgramRecord:
    return ProgramRecord(user_class=cls, latency_s=latency, deadline_s=kw.pop("deadline_s", 5.0), answer=answer,
                         correct=correct, tokens=tokens, **kw)


def test_deadline_and_slo_definitions() -> None:
    assert record(latency=5.3, grace_s=0.5).deadline_met
    late = record(latency=5.6, grace_s=0.5)
    assert not late.deadline_met and late.failure().startswith("deadline missed: 5.60 s")
    unanswered = record(answer=None)
    assert unanswered.deadline_met and not unanswered.attained and unanswered.failure() == "no answer by the deadline"
    broken = record(error="ProgramError: boom")
    assert not broken.deadline_met and broken.failure() == "ProgramError: boom"
    gave_up = record(latency=1.0, ended=False)
    assert not gave_up.deadline_met and "no final answer" in gave_up.failure()
    assert record().attained and record().failure() == ""


def test_summary_per_class() -> None:
    records = [
        record("A", latency=1.0, tokens=100),
        record("A", latency=2.0, tokens=200, correct=False),
        record("A", latency=9.0, tokens=300),  # late
        record("A", latency=3.0, tokens=0, answer=None, correct=False),  # no answer
        record("B", latency=4.0, tokens=50, error="boom", answer=None, correct=False),
    ]
    s = summarize(records, duration_s=10.0)
    assert list(s) == ["A", "B"]
    a, b = s["A"], s["B"]
    assert a.programs == 4 and a.attainment == 0.5 and a.goodput_per_s == pytest.approx(0.2)
    assert a.deadline_met == 0.75 and a.errors == 0
    assert a.accuracy == 0.5, "the late program answered correctly: accuracy is not attainment"
    assert a.mean_tokens == 150.0
    assert a.p50_latency_s == pytest.approx(2.5) and a.p99_latency_s == pytest.approx(9.0 - 0.03 * 6.0)
    assert a.p50_latency_s <= a.p90_latency_s <= a.p99_latency_s
    assert b.programs == 1 and b.attainment == 0.0 and b.errors == 1 and b.goodput_per_s == 0.0
    with pytest.raises(ValueError, match="duration_s"):
        summarize(records, 0.0)


def test_the_summary_counts_attainment_at_the_floor_apart_from_guesses() -> None:
    from dataclasses import replace

    floor = 4
    records = [replace(record("A"), steps=4, floor=floor),  # in time, on the floor: counts
               replace(record("A"), steps=6, probed=3, floor=floor),  # in time, 3 finished: below the floor
               replace(record("A", correct=False), steps=1, floor=floor),  # a guess after one sample
               replace(record("A", latency=9.0), steps=8, floor=floor)]  # late
    a = summarize(records, duration_s=10.0)["A"]
    assert a.attainment == 0.75 and a.attainment_at_floor == 0.25 and a.below_floor == 2
    assert a.goodput_at_floor_per_s == pytest.approx(0.1) and a.correct_goodput_per_s == pytest.approx(0.2)
    assert a.floor == 4
    assert "at floor" in format_summary({"A": a}).splitlines()[0]


def test_percentile_interpolates_and_handles_edges() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 5.0], 0) == 1.0 and percentile([1.0, 5.0], 100) == 5.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q"):
        percentile([1.0], 101)


def test_summary_json_and_table() -> None:
    s = summarize([record("DynasorGrpcUser"), record("BaselineUser", latency=7.0)], duration_s=4.0)
    data = json.loads(summary_json(s, {"program_rate": 0.5}, 4.0))
    assert data["settings"] == {"program_rate": 0.5} and data["duration_s"] == 4.0
    assert data["classes"]["DynasorGrpcUser"]["attainment"] == 1.0
    assert data["classes"]["BaselineUser"]["attainment"] == 0.0
    table = format_summary(s).splitlines()
    assert len(table) == 3 and table[0].startswith("user class")
    assert table[1].startswith("BaselineUser") and "0.0%" in table[1]


def test_bench_fleet_tells_a_lost_program_from_one_the_client_cut_at_its_deadline():
    from benchmarks.bench_fleet import unended

    def record(latency_s: float, ended: bool = False, error: str = "") -> dict:
        return {"latency_s": latency_s, "deadline_s": 60.0, "grace_s": 0.5, "ended": ended, "error": error}

    records = [record(12.0), record(60.5), record(61.0), record(30.0, ended=True), record(1.0, error="refused")]
    assert unended(records, unfinished=2) == {"lost": 3, "late": 2}
