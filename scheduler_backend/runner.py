"""The async driver: runs many reasoning programs on one engine under one scheduler.

Programs and the scheduler make decisions; this module does the I/O. Each program's steps run as
engine calls carrying the scheduler's priority for that program (gang scheduling: one priority
class per program). Deadlines and cancellation stop the program, abort every engine request it
owns, and return its best answer so far.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from scheduler_backend.engine import Engine, EngineError, GenerateCall
from scheduler_backend.program import (
    GenerateStep,
    ProgramState,
    ReasoningProgram,
    Sample,
    ScoreStep,
    Step,
    StepResult,
    StopReason,
)
from scheduler_backend.scheduler import Scheduler

ProgressCallback = Callable[[ProgramState], "Awaitable[None] | None"]
ResultCallback = Callable[[StepResult], None]


@dataclass
class _Live:
    program: ReasoningProgram
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    tokens_in_flight: int = 0  # streamed for steps not finished yet: progress before the first result


class ProgramRunner:
    """One per engine; `run()` is called once per program, concurrently."""

    def __init__(self, engine: Engine, scheduler: Scheduler, clock: Callable[[], float] = time.monotonic,
                 tokens_per_unit_prior: float = 256.0, progress_interval_s: float | None = 1.0):
        self.engine = engine
        self.scheduler = scheduler
        self.clock = clock
        self.tokens_per_unit_prior = tokens_per_unit_prior
        # Between results a program still reports, this often, the tokens its steps are generating.
        self.progress_interval_s = progress_interval_s
        self._live: dict[str, _Live] = {}
        # Programs digest results here, one at a time, off the event loop: comparing answers can
        # take up to its time limit, and the loop keeps every other program's streams moving.
        self._results = ThreadPoolExecutor(max_workers=1, thread_name_prefix="program-results")

    @property
    def live(self) -> int:
        return len(self._live)

    def cancel(self, pid: str) -> None:
        """Stop program `pid` now (client went away); its run returns CANCELLED."""
        live = self._live.get(pid)
        if live is not None:
            live.cancelled.set()

    def cancel_all(self) -> None:
        """Stop every live program (server shutting down)."""
        for live in self._live.values():
            live.cancelled.set()

    def _predicted_work(self, live: _Live) -> float:
        """Scheduler job size in tokens: remaining knob units times tokens per unit seen so far."""
        program = live.program
        steps = program.steps_used()
        per_unit = program.tokens_used / steps if steps and program.tokens_used else self.tokens_per_unit_prior
        return program.predicted_remaining() * per_unit

    def _reschedule(self) -> None:
        decisions = self.scheduler.schedule(self.clock())
        for pid in decisions.admit:
            if pid in self._live:
                self._live[pid].admitted.set()

    async def run(self, pid: str, program: ReasoningProgram, deadline_s: float | None = None,
                  on_progress: ProgressCallback | None = None, on_result: ResultCallback | None = None) -> ProgramState:
        """Run `program` to its stop; `deadline_s` is relative to now. Returns the final state,
        whose `extra` carries latency_s, queued_s and, on ERROR, the error message. `on_result`
        sees every step result after the program took it (trace recording)."""
        if pid in self._live:
            raise ValueError(f"program id {pid!r} is already running")
        start = self.clock()
        deadline = None if deadline_s is None else start + deadline_s
        live = _Live(program)
        self._live[pid] = live
        self.scheduler.add(pid, start, self._predicted_work(live), deadline)
        tasks: dict[asyncio.Task[StepResult], Step] = {}
        error = ""
        queued_s = 0.0
        try:
            self._reschedule()
            if await self._wait_admitted(live, deadline):
                queued_s = self.clock() - start
                error = await self._drive(pid, live, deadline, tasks, on_progress, on_result)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            del self._live[pid]
            self.scheduler.remove(pid)
            self._reschedule()
        state = program.state()
        state.extra.update(latency_s=round(self.clock() - start, 4), queued_s=round(queued_s, 4))
        if error:
            state.extra["error"] = error
        return state

    async def _wait_admitted(self, live: _Live, deadline: float | None) -> bool:
        waiters = [asyncio.ensure_future(live.admitted.wait()), asyncio.ensure_future(live.cancelled.wait())]
        try:
            await asyncio.wait(waiters, timeout=self._time_left(deadline), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if live.cancelled.is_set():
            live.program.stop(StopReason.CANCELLED)
        elif not live.admitted.is_set():
            live.program.stop(StopReason.DEADLINE)
        return live.admitted.is_set() and not live.program.done

    def _time_left(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - self.clock(), 0.0)

    async def _drive(self, pid: str, live: _Live, deadline: float | None, tasks: dict[asyncio.Task[StepResult], Step],
                     on_progress: ProgressCallback | None, on_result: ResultCallback | None) -> str:
        """The program's loop; returns an error message, or "" when it stopped normally."""
        program = live.program
        cancel_wait = asyncio.ensure_future(live.cancelled.wait())
        try:
            while not program.done:
                for step in program.next_steps():
                    tasks[asyncio.ensure_future(self._run_step(pid, live, step))] = step
                if not tasks:
                    return f"program {program.name} issued no step and is not done"
                timeout = self._time_left(deadline)
                tick = self.progress_interval_s if on_progress is not None else None
                ticking = tick is not None and (timeout is None or tick < timeout)
                done, _ = await asyncio.wait([*tasks, cancel_wait], timeout=tick if ticking else timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if cancel_wait in done:
                    program.stop(StopReason.CANCELLED)
                    return ""
                if not done and not ticking:
                    program.stop(StopReason.DEADLINE)
                    return ""
                if not done:
                    await self._report(live, on_progress)
                    continue
                for task in [t for t in tasks if t in done]:
                    tasks.pop(task)
                    try:
                        result = task.result()
                        live.tokens_in_flight -= result.num_tokens
                        await asyncio.get_running_loop().run_in_executor(self._results, program.on_result, result)
                        if on_result is not None:
                            on_result(result)
                    except EngineError as e:
                        program.stop(StopReason.ERROR)
                        return str(e)
                self.scheduler.update(pid, self._predicted_work(live))
                self._reschedule()
                await self._report(live, on_progress)
            return ""
        finally:
            cancel_wait.cancel()

    @staticmethod
    async def _report(live: _Live, on_progress: ProgressCallback | None) -> None:
        if on_progress is None:
            return
        state = live.program.state()
        state.extra["tokens_in_flight"] = live.tokens_in_flight
        maybe = on_progress(state)
        if asyncio.iscoroutine(maybe):
            await maybe

    async def _run_step(self, pid: str, live: _Live, step: Step) -> StepResult:
        if isinstance(step, ScoreStep):
            scores = await self.engine.score(step.question, list(step.candidates))
            return StepResult(step.key, scores=scores)
        assert isinstance(step, GenerateStep)
        call = GenerateCall(
            request_id=f"{pid}:{step.key}",
            sampling=step.sampling,
            messages=step.messages,
            prompt=step.prompt,
            priority=self.scheduler.priority(pid),
        )
        samples: dict[int, Sample] = {}
        try:
            async for deltas in self.engine.generate(call):
                for d in deltas:
                    s = samples.setdefault(d.index, Sample(text="", num_tokens=0))
                    s.text += d.text
                    s.num_tokens += d.num_tokens
                    live.tokens_in_flight += d.num_tokens
                    if d.finished:
                        s.finish_reason = d.finish_reason
                        s.cumulative_logprob = d.cumulative_logprob
        except asyncio.CancelledError:
            await asyncio.shield(self.engine.abort(call.request_id))
            raise
        return StepResult(step.key, samples=[samples[i] for i in sorted(samples)])
