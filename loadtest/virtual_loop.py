"""An asyncio event loop on virtual time, so a simulation runs the real async code (runner,
scheduler, programs) without waiting: whenever the loop would sleep until its next timer, the
clock jumps there instead. Sleeps, `asyncio.wait(timeout=...)` and deadlines all read `loop.time()`,
so they behave as on a real clock, only hours pass in milliseconds.

Virtual time advances only when no callback is ready, so everything that happens at one instant
(a result digested, the next round issued) takes no virtual time. Work handed to threads would
race the clock: while no timer is pending the loop blocks for real (a thread's wake-up still
arrives), but with a timer pending it jumps past whatever a thread is doing. Keep simulated work
on the loop (ProgramRunner's `inline_results`).
"""
from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """Real registration (the loop's self-pipe works), virtual waiting: a wait with a timeout
    moves the clock forward by that timeout and returns at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: only another thread can wake the loop
            return super().select(None)
        self.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """`time()` is virtual, starting at `start`; waiting for a timer costs no wall time."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual = _VirtualSelector()
        self._virtual.now = start
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run coroutine `main` to completion on a fresh virtual-time loop, then close it."""
    loop = VirtualClockLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
