"""The quality floor in the runner: an answer rests on at least `units` knob units, or, under
`refuse`, the program is refused (at arrival, mid-run as soon as the measured rate shows the floor
cannot fit, or at the deadline) with no guess served; under `degrade` it answers and says so.
Scripted engine and the fake clock of test_deadlines."""
from __future__ import annotations

import asyncio

import pytest

from engines.scripted import ScriptedEngine
from scheduler_backend.engine import SamplingSpec
from scheduler_backend.program import GenerateStep, ProgramState, ReasoningProgram, Step, StepResult, StopReason
from scheduler_backend.quality import QualityFloor
from scheduler_backend.runner import _Live
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


def test_refuse_at_arrival_when_a_round_of_the_floor_cannot_fit_before_the_deadline():
    runner = measured(AGREE_ENGINE, rate=20.0)  # 10 tokens a sample
    runner.throughput.per_sequence = 20.0 / 16  # a busy engine: one sequence gets 1.25 tokens/s, a round takes 8 s
    refusal = runner.floor_refusal(sc(), 3.0, REFUSE_8)
    assert refusal.startswith("floor: an answer resting on 8 knob units of self-consistency needs about 8.0 s")
    assert "deadline_s is 3 s" in refusal and "at the measured 1.2 tokens/s per sequence" in refusal
    assert runner.floor_refusal(sc(), 9.0, REFUSE_8) == ""
    runner.throughput.per_sequence = 20.0  # idle: a round of samples side by side takes 0.5 s
    assert runner.floor_refusal(sc(), 3.0, REFUSE_8) == ""
    assert runner.floor_refusal(sc(), 3.0, QualityFloor(units=8, action="degrade")) == "", "degrade admits"
    assert measured(AGREE_ENGINE, rate=None).floor_refusal(sc(), 3.0, REFUSE_8) == "", "no rate yet: admit"


class OneAtATime(ReasoningProgram):
    """A program whose knob units go out one after another (as a tree search's expansions or a
    chain of thought's chunks do): each step one sample, the answer the last one's."""

    name = "one-at-a-time"

    def __init__(self, budget: int) -> None:
        super().__init__("What is 3 + 5?", budget)
        self.texts: list[str] = []
        self.waiting = False

    def next_steps(self) -> list[Step]:
        if self.done or self.waiting or len(self.texts) >= self.budget:
            return []
        self.waiting = True
        return [GenerateStep(key=f"s{len(self.texts)}", sampling=SamplingSpec(max_tokens=64))]

    def _absorb(self, result: StepResult) -> None:
        self.waiting = False
        self.texts += [s.text for s in result.samples]
        if len(self.texts) >= self.budget:
            self._finish(StopReason.CAP)

    def certaindex(self) -> float:
        return 0.0

    def best_answer(self) -> str | None:
        return self.texts[-1] if self.texts else None

    def steps_used(self) -> int:
        return len(self.texts)


def test_refuse_mid_run_as_soon_as_the_measured_rate_shows_the_floor_is_out_of_reach():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=1.5)
    runner = measured(engine, clock)
    runner.throughput.per_sequence = 20.0 / 4  # a unit takes 2 s at the measured rate: after 4 units at 6 s, 1 s is too little
    state = asyncio.run(runner.run("p", OneAtATime(budget=8), deadline_s=7.0, floor=REFUSE_8))
    assert state.stop_reason is StopReason.REFUSED and state.answer is None
    assert len(engine.calls) == 4, "refused before a fifth unit was started"
    assert state.extra["refusal"].startswith("floor: 8 knob units of one-at-a-time cannot be reached by the deadline: 4 done")
    assert state.extra["quality"]["floor_met"] is False and state.extra["quality"]["stop_reason"] == "refused"


def test_a_floor_already_in_flight_is_left_to_the_deadline_not_refused_mid_round():
    """A progress tick 1 s before the deadline, the floor's 4 samples out together for 5 s: a new
    round would take 2 s at the measured speed, but this one is not new and may finish in time,
    so it is not refused then (the deadline judges it). A floor not yet issued is refused."""
    clock = FakeClock()
    runner = measured(ScriptedEngine(lambda call, i: "\\boxed{8}"), clock)
    runner.throughput.per_sequence = 20.0 / 4
    floor = QualityFloor(units=4, action="refuse")
    program = sc(budget=4)
    program.min_units = 4
    live = _Live(program, floor=floor)
    assert [s.sampling.n for s in program.next_steps()] == [4]  # issued, in flight
    clock.now = 6.0
    runner._fit_to_deadline(live, deadline=7.0)
    assert not program.done and not live.refusal
    fresh = _Live(sc(budget=4), floor=floor)
    runner._fit_to_deadline(fresh, deadline=7.0)
    assert fresh.program.stop_reason is StopReason.REFUSED and fresh.refusal.startswith("floor: 4 knob units")


def test_self_consistency_sends_its_floor_in_the_first_round():
    engine = ScriptedEngine(lambda call, i: "\\boxed{8}")
    asyncio.run(measured(engine, rate=None).run("p", sc(budget=16), floor=QualityFloor(units=6)))
    assert engine.calls[0].sampling.n == 6, "no answer may stop below the floor: its samples go side by side"


def test_degrade_answers_below_the_floor_and_says_so():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=1.2)
    floor = QualityFloor(units=8, action="degrade")  # at the measured 8 tokens/s only 4 samples fit in 5 s
    state = asyncio.run(measured(engine, clock, rate=8.0).run("p", sc(), deadline_s=5.0, floor=floor))
    assert state.stop_reason is StopReason.CAP and state.answer is not None  # the deadline's cap: 4 samples
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
