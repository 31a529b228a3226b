"""What the runner does with a deadline once it has measured the engine: budgets shrink to what
fits, infeasible deadlines are refused at arrival (when asked), and unfinished samples are probed
for an answer before the deadline. Scripted engine; a fake clock that the script advances stands
for the time generation takes."""
from __future__ import annotations

import asyncio
import math
import time
from itertools import count

from engines.scripted import ScriptedEngine
from scheduler_backend.engine import SampleDelta
from scheduler_backend.program import StopReason
from scheduler_backend.programs.base import PROBE_SUFFIX
from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import MOST_URGENT, Scheduler

TEN_WORDS = "one two three four five six seven eight nine"
AGREE_ENGINE = ScriptedEngine(lambda call, i: "\\boxed{8}")


def sc(budget: int = 64, **options):
    return create("self-consistency", "What is 3 + 5?", {"budget": budget, "round_size": 4, "detect_step": 4, **options})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def clocked_engine(clock: FakeClock, per_sample_s: float, answers: bool = True) -> ScriptedEngine:
    """Samples of 10 tokens, each a new answer (or none); each sample moves the clock on."""
    numbers = count()

    def script(call, i):
        clock.now += per_sample_s
        return f"{TEN_WORDS} \\boxed{{{next(numbers)}}}" if answers else f"{TEN_WORDS} and then"

    return ScriptedEngine(script)


def measured(engine: ScriptedEngine, clock: FakeClock | None = None, rate: float | None = 20.0, **options) -> ProgramRunner:
    """A runner that has measured `rate` tokens/s (kept fixed), all of it on one sequence, and 10
    tokens per sample."""
    runner = ProgramRunner(engine, Scheduler(), clock=clock or time.monotonic, tokens_per_unit_prior=10.0, **options)
    runner.throughput.rate = rate
    runner.throughput.per_sequence = rate
    runner.throughput.window_s = math.inf
    return runner


def test_a_deadline_shrinks_the_budget_and_the_last_round_asks_fewer_samples():
    # 20 tokens/s at 10 tokens a sample: 2 samples a second; each sample takes 0.5 s of the clock.
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=0.5)
    state = asyncio.run(measured(engine, clock).run("p", sc(), deadline_s=5.0))
    assert state.budget == 10, "5 s at 2 samples/s"
    assert [c.sampling.n for c in engine.calls] == [4, 4, 2]
    assert state.stop_reason is StopReason.CAP and state.steps == 10 and clock.now <= 5.0


def test_no_measured_rate_no_shrinking():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=0.5)
    state = asyncio.run(measured(engine, clock, rate=None).run("p", sc(), deadline_s=5.0))
    assert state.budget == 64
    assert {c.sampling.n for c in engine.calls} == {4}


def test_a_program_with_an_answer_and_no_time_for_one_more_sample_stops_at_once():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=1.2)  # the first round ends at 4.8 s: 0.4 samples fit
    state = asyncio.run(measured(engine, clock).run("p", sc(), deadline_s=5.0))
    assert state.stop_reason is StopReason.DEADLINE and state.answer is not None
    assert len(engine.calls) == 1, "no round was started that could not finish"
    assert state.budget == 10, "set before the first round: 5 s at 2 samples/s"


def test_a_program_without_an_answer_keeps_one_more_sample():
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=1.2, answers=False)
    state = asyncio.run(measured(engine, clock).run("p", sc(), deadline_s=5.0))
    assert [c.sampling.n for c in engine.calls] == [4, 1]
    assert state.budget == 5 and state.stop_reason is StopReason.CAP


def test_limit_budget_never_cuts_below_what_is_in_flight():
    program = sc()
    program.next_steps()  # 4 samples out
    assert program.limit_budget(1) == 4 and not program.done
    assert program.allocation.budget == 4, "the allocation judges against the lowered cap"
    assert program.limit_budget(10) == 4, "it only ever lowers"


def test_feasible_admission_refuses_a_deadline_that_cannot_fit_the_first_round():
    runner = measured(AGREE_ENGINE, rate=168.0, admission="feasible")
    runner.tokens_per_unit_prior = 256.0
    refusal = runner.refusal(sc(), 2.0)  # 4 samples x 256 tokens at 168 tokens/s: 6.1 s
    assert refusal == ("deadline_s: 2 s cannot be met: the first step of self-consistency needs about 1,024 tokens, "
                       "about 6.1 s at the measured 168 tokens/s per program")
    assert runner.refusal(sc(), 7.0) == ""
    assert runner.refusal(sc(), None) == ""
    assert measured(AGREE_ENGINE, rate=168.0).refusal(sc(), 2.0) == "", "admission 'all' admits everything"
    assert measured(AGREE_ENGINE, rate=None, admission="feasible").refusal(sc(), 2.0) == "", "no rate yet: admit"


def test_feasible_admission_counts_the_wait_for_a_busy_slot():
    scheduler = Scheduler(max_running=1)
    runner = ProgramRunner(AGREE_ENGINE, scheduler, tokens_per_unit_prior=10.0, admission="feasible")
    runner.throughput.rate = 10.0
    scheduler.add("busy", 0.0, predicted_work=50.0)
    scheduler.add("longer", 0.0, predicted_work=500.0)
    scheduler.schedule(0.0)  # "busy" runs: 5 s of work left; the new program's 4 samples need 4 s
    refusal = runner.refusal(sc(), 8.0)
    assert refusal.startswith("deadline_s: 8 s cannot be met") and "after about 5.0 s waiting for a busy slot" in refusal
    assert runner.refusal(sc(), 9.5) == ""


class Unfinished(ScriptedEngine):
    """Solutions stream a first piece and never finish; probes answer at once from the piece they
    continue (part 2 says 9, the others 7), or never when `probes_hang`."""

    def __init__(self, probes_hang: bool = False) -> None:
        super().__init__(lambda call, i: "9} \\]" if "part 2." in call.messages[-1].content else "7} \\]")
        self.probes_hang = probes_hang

    async def generate(self, call):
        if ":probe" in call.request_id and not self.probes_hang:
            async for deltas in super().generate(call):
                yield deltas
            return
        self.calls.append(call)
        yield [SampleDelta(index=i, text=f"Let me work on part {i}.", num_tokens=6) for i in range(call.sampling.n)]
        await asyncio.sleep(3600)


def run_timed(runner: ProgramRunner, deadline_s: float):
    async def go():
        t0 = time.monotonic()
        state = await runner.run("p", sc(budget=8), deadline_s=deadline_s)
        return state, time.monotonic() - t0

    return asyncio.run(go())


def test_unfinished_samples_are_probed_for_the_answer_before_the_deadline():
    engine = Unfinished()
    state, elapsed = run_timed(ProgramRunner(engine, Scheduler(), probe_s=0.3), deadline_s=0.6)
    assert state.stop_reason is StopReason.DEADLINE
    assert state.answer == "7" and state.extra["probed"] == 4 and state.steps == 4
    probes = [c for c in engine.calls if ":probe" in c.request_id]
    assert len(probes) == 4 and {c.priority for c in probes} == {MOST_URGENT}
    assert {c.sampling.temperature for c in probes} == {0.0}, "greedy"
    assert probes[0].messages[-1].content == "Let me work on part 0." + PROBE_SUFFIX
    assert engine.aborted == ["p:round1"], "the solutions' generation was cut for the probes"
    assert 0.3 <= elapsed < 0.55, "stopped once the probes answered, before the deadline"


def test_without_probing_a_deadline_before_any_finished_sample_has_no_answer():
    engine = Unfinished()
    state, elapsed = run_timed(ProgramRunner(engine, Scheduler(), probe_s=0.0), deadline_s=0.4)
    assert state.stop_reason is StopReason.DEADLINE and state.answer is None
    assert state.extra["probed"] == 0 and not [c for c in engine.calls if ":probe" in c.request_id]
    assert elapsed >= 0.4


def test_probes_that_do_not_return_by_the_deadline_do_not_hold_the_program():
    engine = Unfinished(probes_hang=True)
    state, elapsed = run_timed(ProgramRunner(engine, Scheduler(), probe_s=0.2), deadline_s=0.5)
    assert state.stop_reason is StopReason.DEADLINE and state.answer is None
    assert 0.5 <= elapsed < 0.8
    assert sorted(engine.aborted) == ["p:probe0", "p:probe1", "p:probe2", "p:probe3", "p:round1"]


def test_runner_options_are_checked_by_name():
    for options, field in (({"admission": "some"}, "admission:"), ({"probe_s": -1.0}, "probe_s:")):
        try:
            ProgramRunner(AGREE_ENGINE, Scheduler(), **options)
        except ValueError as e:
            assert str(e).startswith(field)
        else:
            raise AssertionError(f"{options} was accepted")


def test_without_time_for_two_rounds_the_rest_of_the_budget_goes_out_in_one():
    # 20 tokens/s over 8 sequences: 2.5 tokens/s each, a 10-token sample takes 4 s, so
    # a 5 s deadline has room for one round, not two; the budget that fits (10) goes out at once.
    clock = FakeClock()
    engine = clocked_engine(clock, per_sample_s=0.05)
    runner = measured(engine, clock)
    runner.throughput.per_sequence = 20.0 / 8
    state = asyncio.run(runner.run("p", sc(), deadline_s=5.0))
    assert [c.sampling.n for c in engine.calls] == [10]
    assert state.steps == 10
    roomy = measured(clocked_engine(FakeClock(), per_sample_s=0.0))
    roomy.throughput.per_sequence = 20.0 / 8
    asyncio.run(roomy.run("q", sc(budget=8), deadline_s=60.0))
    assert [c.sampling.n for c in roomy.engine.calls][:2] == [4, 4], "with time for many rounds, rounds stay as asked"
