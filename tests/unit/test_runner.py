"""The async driver on the scripted engine: stops, deadlines, cancellation, engine errors,
admission order and priorities."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor, Future

from engines.scripted import ScriptedEngine
from scheduler_backend.capacity import ConcurrencyController
from scheduler_backend.program import StopReason
from scheduler_backend.registry import create
from scheduler_backend.runner import MAX_STEPS_WITHOUT_PROGRESS, ProgramRunner, ThroughputMeter
from scheduler_backend.scheduler import Scheduler

AGREE = ScriptedEngine(lambda call, i: "so the answer is \\boxed{8}")


def differing(delay_s: float = 0.0) -> ScriptedEngine:
    counter = iter(range(10**6))
    return ScriptedEngine(lambda call, i: f"\\boxed{{{next(counter)}}}", delay_s=delay_s)


def sc(budget: int = 8, **options):
    return create("self-consistency", "What is 3 + 5?", {"budget": budget, "round_size": 2, "detect_step": 2, **options})


def test_a_settled_program_stops_early_and_reports_progress():
    seen = []
    state = asyncio.run(ProgramRunner(AGREE, Scheduler()).run("p", sc(), on_progress=seen.append))
    assert state.stop_reason is StopReason.SETTLED and state.answer == "8"
    assert state.steps == 2 and state.certaindex == 1.0
    assert [s.steps for s in seen] == [2] and seen[-1].done
    assert state.extra["latency_s"] >= 0 and "error" not in state.extra


def test_disagreeing_program_runs_to_its_cap_one_round_at_a_time():
    seen = []
    state = asyncio.run(ProgramRunner(differing(), Scheduler()).run("p", sc(budget=6), on_progress=seen.append))
    assert state.stop_reason is StopReason.CAP and state.steps == 6
    assert [s.steps for s in seen] == [2, 4, 6]


def test_a_deadline_returns_the_best_answer_so_far_and_aborts_engine_requests():
    engine = differing(delay_s=0.2)

    async def go():
        t0 = time.monotonic()
        state = await ProgramRunner(engine, Scheduler()).run("p", sc(budget=64), deadline_s=1.0)
        return state, time.monotonic() - t0

    state, elapsed = asyncio.run(go())
    assert state.stop_reason is StopReason.DEADLINE
    assert 1.0 <= elapsed < 1.5
    assert state.steps >= 2 and state.answer is not None, "rounds finished before the deadline count"
    assert engine.aborted and engine.aborted[-1] == engine.calls[-1].request_id


def test_cancel_stops_the_program_and_aborts_its_requests():
    engine = differing(delay_s=0.2)

    async def go():
        runner = ProgramRunner(engine, Scheduler())
        task = asyncio.ensure_future(runner.run("p", sc(budget=64)))
        await asyncio.sleep(0.3)
        runner.cancel("p")
        return await task

    state = asyncio.run(go())
    assert state.stop_reason is StopReason.CANCELLED
    assert engine.aborted == [engine.calls[-1].request_id]


def test_an_engine_error_stops_the_program_with_the_message():
    engine = differing()
    engine.fail("p:round1")
    state = asyncio.run(ProgramRunner(engine, Scheduler()).run("p", sc()))
    assert state.stop_reason is StopReason.ERROR and "scripted failure" in state.extra["error"]


def test_admission_is_shortest_predicted_work_first_and_each_program_has_one_priority():
    engine = differing(delay_s=0.01)

    async def go():
        runner = ProgramRunner(engine, Scheduler(max_running=1))
        blocker = asyncio.ensure_future(runner.run("blocker", sc(budget=2)))
        await asyncio.sleep(0)
        big = asyncio.ensure_future(runner.run("big", sc(budget=32)))
        small = asyncio.ensure_future(runner.run("small", sc(budget=4)))
        return await asyncio.gather(blocker, big, small)

    blocker, big, small = asyncio.run(go())
    order = []
    for call in engine.calls:
        pid = call.request_id.split(":")[0]
        if pid not in order:
            order.append(pid)
    assert order == ["blocker", "small", "big"]
    assert small.extra["queued_s"] > 0 and big.extra["queued_s"] >= small.extra["queued_s"]
    by_program = {}
    for call in engine.calls:
        by_program.setdefault(call.request_id.split(":")[0], []).append(call.priority)
    assert by_program["small"][0] < by_program["big"][0], "less predicted work runs first in the engine"


def test_a_program_id_cannot_run_twice():
    async def go():
        runner = ProgramRunner(differing(delay_s=0.05), Scheduler())
        first = asyncio.ensure_future(runner.run("p", sc(budget=4)))
        await asyncio.sleep(0)
        try:
            await runner.run("p", sc())
        except ValueError as e:
            await first
            return str(e)
        return ""

    assert "already running" in asyncio.run(go())


def test_between_results_progress_reports_the_tokens_being_generated():
    """A client sees work from the first seconds, before any sample has finished."""
    seen = []
    engine = ScriptedEngine(lambda call, i: "first this, then that, and so on " * 4 + f"\\boxed{{{i}}}", delay_s=0.3)
    runner = ProgramRunner(engine, Scheduler(), progress_interval_s=0.05)
    state = asyncio.run(runner.run("p", sc(budget=4), on_progress=seen.append))
    early = [s for s in seen if s.steps == 0]
    assert early, "no progress before the first round finished"
    assert any(s.extra["tokens_in_flight"] > 0 for s in early)
    assert state.stop_reason is StopReason.CAP and state.steps == 4
    assert seen[-1].extra["tokens_in_flight"] == 0, "finished rounds move their tokens to tokens_used"


def test_progress_ticks_do_not_end_a_program_before_its_deadline():
    runner = ProgramRunner(differing(delay_s=0.2), Scheduler(), progress_interval_s=0.05)

    async def go():
        t0 = time.monotonic()
        state = await runner.run("p", sc(budget=64), deadline_s=0.8, on_progress=lambda s: None)
        return state, time.monotonic() - t0

    state, elapsed = asyncio.run(go())
    assert state.stop_reason is StopReason.DEADLINE and elapsed >= 0.8


class NoSamples(ScriptedEngine):
    """An engine that ends every call without a sample (how a broken engine once looked)."""

    def __init__(self) -> None:
        super().__init__(lambda call, i: "")

    async def generate(self, call):
        self.calls.append(call)
        return
        yield


def test_a_program_whose_steps_add_nothing_stops_with_an_error_instead_of_spinning():
    engine = NoSamples()
    # Without the guard this ran until killed (53,181 engine calls in 3 s): a time limit makes it fail.
    state = asyncio.run(asyncio.wait_for(ProgramRunner(engine, Scheduler()).run("p", sc(budget=8)), timeout=5))
    assert state.stop_reason is StopReason.ERROR
    assert "no progress in 3 steps" in state.extra["error"] and "no samples" in state.extra["error"]
    assert len(engine.calls) == MAX_STEPS_WITHOUT_PROGRESS, "it asked a few times, not tens of thousands"


def test_a_step_that_adds_something_resets_the_guard():
    """Empty rounds between real ones are not a spin: the program runs to its cap."""
    rounds = iter(range(100))
    real = {0, 3, 6, 9}

    class Sometimes(ScriptedEngine):
        async def generate(self, call):
            if next(rounds) in real:
                async for deltas in super().generate(call):
                    yield deltas
            else:
                self.calls.append(call)

    engine = Sometimes(lambda call, i: f"\\boxed{{{len(engine.calls)}{i}}}")
    state = asyncio.run(ProgramRunner(engine, Scheduler()).run("p", sc(budget=8)))
    assert state.stop_reason is StopReason.CAP and state.steps == 8
    assert len(engine.calls) == 10


def test_throughput_meter_keeps_the_peak_rate_while_the_rate_falls_with_the_load():
    meter = ThroughputMeter(window_s=1.0, alpha=0.5)
    meter.busy(0.0)
    for t, tokens in ((1.0, 200), (2.0, 200), (3.0, 20), (4.0, 20)):
        meter.add(tokens, t)
    assert meter.rate is not None and meter.rate < 100 and meter.peak_rate == 200.0


def test_throughput_meter_averages_busy_windows_only():
    meter = ThroughputMeter(window_s=1.0, alpha=0.5)
    meter.busy(0.0)
    meter.add(50, 0.5)
    assert meter.rate is None, "half a window is not a sample yet"
    meter.add(50, 1.0)
    assert meter.rate == 100.0
    meter.add(100, 1.5)
    meter.idle(1.5)  # 100 tokens in 0.5 s: 200 tok/s, averaged in
    assert meter.rate == 150.0
    meter.busy(100.0)  # 98.5 idle seconds do not dilute the rate
    meter.add(150, 101.0)
    assert meter.rate == 150.0
    meter.idle(101.0)
    meter.idle(102.0)
    assert meter.rate == 150.0


def test_the_runner_learns_tokens_per_unit_and_feeds_a_measured_rate_to_the_scheduler():
    # Each sample is 10 words (tokens), streamed in 3 deltas 0.05 s apart.
    engine = ScriptedEngine(lambda call, i: f"one two three four five six seven eight nine \\boxed{{{i}}}", delay_s=0.05)
    scheduler = Scheduler()
    runner = ProgramRunner(engine, scheduler)
    runner.throughput.window_s = 0.05
    assert runner.tokens_per_unit("self-consistency") == runner.tokens_per_unit_prior
    assert scheduler.work_per_s is None
    state = asyncio.run(runner.run("p", sc(budget=4)))
    assert state.steps == 4 and state.tokens_used == 40
    assert runner.tokens_per_unit("self-consistency") == 10.0
    assert runner.tokens_per_unit("mcts") == runner.tokens_per_unit_prior, "learned per kind of program"
    # 2 samples x 10 tokens per round in ~0.15 s: about 130 tok/s, never more than all of it at once.
    assert scheduler.work_per_s is not None and 20 < scheduler.work_per_s < 400


def test_throughput_windows_carry_the_mean_sequences_in_flight():
    windows = []
    meter = ThroughputMeter(window_s=1.0)
    meter.on_window = lambda seqs, programs, rate: windows.append((seqs, programs, rate))
    meter.busy(0.0)
    meter.programs_running(2, 0.0)
    meter.sequences_changed(4, 0.0)
    meter.sequences_changed(-2, 0.5)  # 4 for half the window, 2 for the other half
    meter.programs_running(1, 0.75)
    meter.add(30, 1.0)
    assert windows == [(3.0, 1.75, 30.0)]
    meter.sequences_changed(-2, 1.5)
    meter.idle(2.0)
    assert meter.sequences == 0 and len(windows) == 1, "a window without tokens is no sample"
    meter.sequences_changed(8, 10.0)
    meter.busy(10.0)
    meter.add(80, 11.0)
    assert windows[-1] == (8.0, 1.0, 80.0), "idle time is not counted"


def test_the_speed_of_one_sequence_is_each_windows_rate_over_its_own_sequences():
    """Not the averaged rate over the sequences in flight now: 3 sequences made 30 tokens/s (10
    each); 8 arriving afterwards do not make that 30 / 8 before a window has measured them."""
    meter = ThroughputMeter(window_s=1.0, alpha=0.5)
    meter.busy(0.0)
    meter.sequences_changed(3, 0.0)
    meter.add(30, 1.0)
    assert meter.per_sequence == 10.0
    meter.sequences_changed(5, 1.0)  # 8 in flight from now
    assert meter.per_sequence == 10.0
    meter.add(48, 2.0)  # 8 sequences made 48 tokens/s: 6 each
    assert meter.per_sequence == 8.0, "averaged in"


class CapacityCurve(ScriptedEngine):
    """Time passes with the tokens it streams, at a rate set by the sequences in flight: tokens/s
    grows linearly up to `knee_seqs` sequences, then stays. The runner's clock is `self.now`."""

    def __init__(self, knee_seqs: int, peak_tokens_per_s: float = 1000.0):
        counter = iter(range(10**6))
        super().__init__(lambda call, i: "w " * 30 + f"\\boxed{{{next(counter)}}}", deltas_per_sample=30)
        self.knee_seqs = knee_seqs
        self.peak = peak_tokens_per_s
        self.now = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0

    async def generate(self, call):
        self.in_flight += call.sampling.n
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            async for deltas in super().generate(call):
                await asyncio.sleep(0)  # let the other streams take turns, as a batch does
                rate = self.peak * min(self.in_flight, self.knee_seqs) / self.knee_seqs
                self.now += sum(d.num_tokens for d in deltas) / rate
                yield deltas
        finally:
            self.in_flight -= call.sampling.n


class Inline(Executor):
    """Programs digest results at once: no engine time passes meanwhile, as on a real engine
    where that takes milliseconds (on a thread, this engine's clock would race ahead)."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_the_runner_sets_max_running_from_the_measured_capacity():
    """The engine gains up to 12 sequences in flight; each program keeps 2 (round_size 2): from
    one program at a time the runner grows to about 6 to 9, not the 40 waiting."""
    engine = CapacityCurve(knee_seqs=12)
    scheduler = Scheduler(max_running=40)
    runner = ProgramRunner(engine, scheduler, clock=lambda: engine.now,
                           concurrency=ConcurrencyController(initial_programs=1, min_windows=1))
    assert scheduler.max_running == 1, "the controller's cold start replaces the scheduler's limit"
    runner._results = Inline()
    runner.throughput.window_s = 0.5
    limits = []
    runner.throughput.on_window = lambda *window: (runner._learn_capacity(*window), limits.append(scheduler.max_running))

    async def go():
        return await asyncio.gather(*(runner.run(f"p{i}", sc(budget=16)) for i in range(40)))

    states = asyncio.run(go())
    assert all(s.stop_reason is StopReason.CAP for s in states)
    assert limits[:3] == [2, 3, 4], "it explores up while more sequences pay"
    settled = limits[len(limits) // 3:]
    assert all(5 <= n <= 12 for n in settled), limits
    assert engine.peak_in_flight <= 2 * max(limits)


class SlowAbortEngine:
    """Samples that never finish, and an abort that takes `abort_s` (a loaded host's gRPC close)."""

    def __init__(self, abort_s: float) -> None:
        self.abort_s = abort_s
        self.aborted: list[str] = []

    async def generate(self, call):
        await asyncio.sleep(3600)
        yield []

    async def abort(self, request_id: str) -> None:
        await asyncio.sleep(self.abort_s)
        self.aborted.append(request_id)

    async def score(self, question, candidates):
        return []

    def shutdown(self) -> None:
        pass


def test_the_answer_at_a_deadline_does_not_wait_for_slow_engine_aborts():
    engine = SlowAbortEngine(abort_s=1.0)
    runner = ProgramRunner(engine, Scheduler())

    async def go():
        t0 = time.monotonic()
        state = await runner.run("p", create("self-consistency", "What is 2 + 3?", {"budget": 4}), deadline_s=0.2)
        returned_s = time.monotonic() - t0
        aborted_then = list(engine.aborted)
        await asyncio.sleep(1.2)
        return state, returned_s, aborted_then

    state, returned_s, aborted_then = asyncio.run(go())
    assert state.stop_reason is StopReason.DEADLINE
    assert returned_s < 0.6, f"the answer waited {returned_s:.2f} s for the aborts"
    assert aborted_then == [] and engine.aborted == ["p:round1"], "the abort still happens, after the answer"
