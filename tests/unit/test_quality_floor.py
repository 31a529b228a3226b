"""The quality floor in the runner: an answer rests on at least `units` knob units, or, under
`refuse`, the program is refused (at arrival, mid-run as soon as the measured rate shows the floor
cannot fit, or at the deadline) with no guess served; under `degrade` it answers and says so.
Scripted engine and the fake clock of test_deadlines."""
from __future__ import annotations

import asyncio

import pytest

from engines.scripted import ScriptedEngine
from scheduler_backend.program import ProgramState, StopReason
from scheduler_backend.quality import QualityFloor
from tests.unit.test_deadlines import AGREE_ENGINE, FakeClock, clocked_engine, measured, sc

REFUSE_8 = QualityFloor(units=8, action="refuse")


def test_the_floor_keeps_a_settled_program_going_until_its_answer_rests_on_the_floor():
    engine = ScriptedEngine(lambda call, i: "\\boxed{8}")
    runner = measured(engine, rate=None)
    early = asyncio.run(runner.run("a", sc(budget=16)))
    assert early.stop_reason is StopReason.SETTLED and early.steps == 4
    floored = asyncio.run(runner.run("b", sc(budget=16), floor=QualityFloor(units=8)))
    assert floored.stop_reason is StopReason.SETTLED and floored.steps == 8
    assert floored.extra["quality"] == {"units": 8, "probed": 0, "floor": 8, "floor_met": True, "counts_probed": False,
                                        "stop_reason": "settled"}


def test_refuse_at_arrival_when_the_floor_cannot_fit_before_the_deadline():
    runner = measured(AGREE_ENGINE, rate=20.0)  # 10 tokens a sample: 2 samples/s
    refusal = runner.floor_refusal(sc(), 3.0, REFUSE_8)
    assert refusal.startswith("floor: an answer resting on 8 knob units of self-consistency needs about 4.0 s")
    assert "deadline_s is 3 s" in refusal
    assert runner.floor_refusal(sc(), 5.0, REFUSE_8) == ""
    assert runner.floor_refusal(sc(), 3.0, QualityFloor(units=8, action="degrade")) == "", "degrade admits"
    assert measured(AGREE_ENGINE, rate=None).floor_refusal(sc(), 3.0, REFUSE_8) == "", "no rate yet: admit"


def test_refuse_mid_run_as_soon_as_the_measured_rate_shows_the_floor_is_out_of_reach():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=1.0)  # slower than the 2 samples/s measured: 4 s a round
    state = asyncio.run(measured(engine, clock).run("p", sc(), deadline_s=5.0, floor=REFUSE_8))
    assert state.stop_reason is StopReason.REFUSED and state.answer is None
    assert len(engine.calls) == 1, "refused before a second round was started"
    assert state.extra["refusal"].startswith("floor: 8 knob units of self-consistency cannot be reached by the deadline: 4 done")
    assert state.extra["quality"]["floor_met"] is False and state.extra["quality"]["stop_reason"] == "refused"


def test_degrade_answers_below_the_floor_and_says_so():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=1.2)
    floor = QualityFloor(units=8, action="degrade")
    state = asyncio.run(measured(engine, clock).run("p", sc(), deadline_s=5.0, floor=floor))
    assert state.stop_reason is StopReason.DEADLINE and state.answer is not None
    assert state.extra["quality"]["units"] == 4 and state.extra["quality"]["floor_met"] is False


def test_a_refusing_floor_keeps_the_budget_at_the_floor_and_answers_when_it_is_met():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=0.5)  # as measured: 10 samples fit in 5 s
    state = asyncio.run(measured(engine, clock).run("p", sc(), deadline_s=5.0, floor=QualityFloor(units=6, action="refuse")))
    assert state.answer is not None and state.extra["quality"]["floor_met"] is True and state.steps >= 6


@pytest.mark.parametrize("count_probed, met", [(False, False), (True, True)])
def test_probed_answers_count_toward_the_floor_only_where_the_operator_allows(count_probed, met):
    state = ProgramState("7", 0.5, steps=4, budget=8, tokens_used=40, done=True, stop_reason=StopReason.DEADLINE,
                         extra={"probed": 2})
    floor = QualityFloor(units=4, count_probed=count_probed)
    assert floor.met(state) is met and floor.report(state)["units"] == 2


def test_bad_floors_are_refused_by_name():
    with pytest.raises(ValueError, match="^floor: must be an integer >= 0"):
        QualityFloor(units=-1)
    with pytest.raises(ValueError, match="^floor_action: must be one of degrade, refuse"):
        QualityFloor(units=2, action="drop")
