"""Inter-program scheduling: which programs may issue engine requests, and at what priority.

Shaped like nano-vllm's scheduler: plain queues, `schedule(now)` returns decisions, no I/O and no
clock of its own, so the server, a trace replay and a simulator drive the same object.

Policy ("sjf"): approximate shortest-job-first on predicted remaining work with linear aging, so
no program starves. The aged key of a program is `work - aging_per_s * (now - arrival)`; its order
equals that of `work + aging_per_s * arrival`, which does not depend on `now`, so a heap with lazy
deletion keeps the order without re-sorting. A program whose deadline is near (within
`deadline_margin_s`, or nearer than its predicted remaining time at `work_per_s`) is *urgent*:
urgent programs go before all others, earliest deadline first. "fcfs" admits by arrival only, as a
baseline.

Admission is non-preemptive: at most `max_running` programs are running; a running program stays
so until `remove`. Preemption is left to the engine: every request of one program carries that
program's single priority (gang scheduling), and vLLM's priority scheduler runs lower values first.

Priority integers are a quantized key rather than ranks: a program's priority depends only on its
own arrival, predicted work and deadline, so it stays put while other programs come and go (a
rank would renumber every running program on each arrival, and requests already in the engine
cannot be re-prioritized). Normal programs get `(key - aging_per_s * origin) // priority_quantum`
in [0, 2**31); urgent ones get negative values ordered by deadline, `(deadline - origin)` in
0.01 s steps from -2**30, in [-2**30, 0). Both fit int32, so the value can cross any tensor
boundary. Order is preserved: a smaller key never gets a larger priority, and keys at least one
quantum apart differ.

The origin is the earliest arrival among live programs, not the server's start: it is reset when
the scheduler empties, and moved up (every live priority recomputed, order kept) when a new
priority would leave its range, so the ranges (124 days of deadlines, 2**31 work units of aged
key) bound only the spread of the programs alive together, never the uptime.

Deadline urgency uses a measured rate when the driver supplies one (`set_work_rate`: work per
second one program gets, e.g. the engine's measured tokens/s shared by the running programs): a
program turns urgent once its predicted remaining work at that rate, plus `deadline_margin_s`,
no longer fits before its deadline.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

_INT31 = 2**31 - 1
_URGENT_BASE = -(2**30)
_DEADLINE_QUANTUM_S = 0.01  # EDF resolution of urgent priorities
_COMPACT_SLACK = 64  # rebuild a heap once stale entries outnumber live ones by this much
# Before every program's priority, urgent ones included: for requests that must beat a deadline.
MOST_URGENT = _URGENT_BASE - 1


class SchedulingPolicy(str, Enum):
    """How waiting programs are ordered: shortest predicted remaining work first (with aging and
    deadline urgency), or first come, first served (the baseline)."""

    SJF = "sjf"
    FCFS = "fcfs"


@dataclass
class Decisions:
    """What `schedule` decided: programs newly allowed to issue requests (their engine priority
    is `Scheduler.priority`)."""

    admit: list[str] = field(default_factory=list)


@dataclass
class _Program:
    arrival: float
    seq: int
    work: float
    deadline: float | None
    key: float
    version: int = 0
    running: bool = False
    urgent: bool = False
    priority: int = 0


class Scheduler:
    """Admission and priorities for live programs. Work units are the caller's (tokens, say);
    `aging_per_s`, `work_per_s` and `priority_quantum` are in the same unit."""

    def __init__(
        self,
        max_running: int = 16,
        aging_per_s: float = 50.0,
        deadline_margin_s: float = 2.0,
        priority_quantum: float = 1.0,
        policy: SchedulingPolicy | str = SchedulingPolicy.SJF,
        work_per_s: float | None = None,
    ):
        _check_max_running(max_running)
        if not (math.isfinite(aging_per_s) and aging_per_s > 0):
            # 0 is pure SJF: a stream of short programs holds a long one back forever.
            raise ValueError(f"aging_per_s: must be finite and > 0 (0 lets a long program starve), got {aging_per_s!r}")
        if not (math.isfinite(deadline_margin_s) and deadline_margin_s >= 0):
            raise ValueError(f"deadline_margin_s: must be finite and >= 0, got {deadline_margin_s!r}")
        if not (math.isfinite(priority_quantum) and priority_quantum > 0):
            raise ValueError(f"priority_quantum: must be finite and > 0, got {priority_quantum!r}")
        if policy not in {p.value for p in SchedulingPolicy}:
            raise ValueError(f"policy: must be 'sjf' or 'fcfs', got {policy!r}")
        _check_rate(work_per_s)
        self.max_running = max_running
        self.aging_per_s = float(aging_per_s)
        self.deadline_margin_s = float(deadline_margin_s)
        self.priority_quantum = float(priority_quantum)
        self.policy = SchedulingPolicy(policy)
        self.work_per_s = work_per_s
        self._programs: dict[str, _Program] = {}
        self._priorities: dict[str, int] = {}  # running programs only
        self._normal: list[tuple[float, int, int, str]] = []  # (key, seq, version, pid), waiting
        self._urgent: list[tuple[float, int, int, str]] = []  # (deadline, seq, version, pid), waiting
        self._due: list[tuple[float, int, int, str]] = []  # (urgent_at, seq, version, pid), not yet urgent
        self._waiting = 0
        self._seq = 0
        self._origin: float | None = None  # earliest live arrival (at most): priorities count from it

    def __len__(self) -> int:
        return len(self._programs)

    @property
    def running(self) -> int:
        return len(self._priorities)

    @property
    def queued(self) -> int:
        """Programs waiting for a slot."""
        return self._waiting

    def total_work(self) -> float:
        """Predicted remaining work of every live program, running or waiting: the replica's load
        as a balancer or an autoscaler would weigh it."""
        return sum(p.work for p in self._programs.values())

    def add(self, pid: str, now: float, predicted_work: float, deadline: float | None = None) -> None:
        """A new program arrives; it waits until `schedule` admits it."""
        if pid in self._programs:
            raise ValueError(f"pid: {pid!r} is already scheduled")
        _check_work(predicted_work)
        if deadline is not None and not math.isfinite(deadline):
            raise ValueError(f"deadline: must be finite or None, got {deadline!r}")
        if self._origin is None:
            self._origin = now
        self._seq += 1
        prog = _Program(arrival=now, seq=self._seq, work=float(predicted_work), deadline=deadline, key=0.0)
        self._programs[pid] = prog
        self._waiting += 1
        self._rekey(pid, prog)

    def update(self, pid: str, predicted_work: float) -> None:
        """New predicted remaining work after a step result."""
        prog = self._get(pid)
        _check_work(predicted_work)
        prog.work = float(predicted_work)
        prog.version += 1
        self._rekey(pid, prog)

    def remove(self, pid: str) -> None:
        """The program finished (or was cancelled): free its slot. Heap entries die lazily."""
        prog = self._get(pid)
        del self._programs[pid]
        if prog.running:
            del self._priorities[pid]
        else:
            self._waiting -= 1
        if not self._programs:
            self._origin = None  # the next arrival starts the count afresh
            self._normal.clear()
            self._urgent.clear()
            self._due.clear()

    def least_running_work(self) -> float:
        """The least predicted remaining work among running programs (0.0 when none runs): about
        the work that stands between a new program and a free slot when every slot is busy."""
        return min((p.work for p in self._programs.values() if p.running), default=0.0)

    def set_work_rate(self, work_per_s: float | None) -> None:
        """The measured rate one program makes progress at (None: unknown); deadline urgency
        uses it from each program's next arrival or update on."""
        _check_rate(work_per_s)
        self.work_per_s = work_per_s

    def set_max_running(self, max_running: int) -> None:
        """A new limit on programs running at once (the measured capacity moved). Lowering it
        stops no running program, admission waits until fewer run; raising it admits at the next
        `schedule`."""
        _check_max_running(max_running)
        self.max_running = max_running

    def priority(self, pid: str) -> int:
        """The program's current engine priority (lower runs first)."""
        return self._get(pid).priority

    def schedule(self, now: float) -> Decisions:
        """Mark programs whose deadline came near as urgent, then fill free slots in order."""
        self._promote_due(now)
        admit = []
        while len(self._priorities) < self.max_running and self._waiting:
            pid = self._pop_waiting()
            prog = self._programs[pid]
            prog.running = True
            self._waiting -= 1
            self._priorities[pid] = prog.priority
            admit.append(pid)
        return Decisions(admit=admit)

    def _get(self, pid: str) -> _Program:
        try:
            return self._programs[pid]
        except KeyError:
            raise KeyError(f"pid: {pid!r} is not scheduled") from None

    def _rekey(self, pid: str, prog: _Program) -> None:
        """Recompute the key and priority after arrival or new work; queue fresh heap entries."""
        if self.policy is SchedulingPolicy.FCFS:
            prog.key = float(prog.seq)
            prog.priority = min(prog.seq, _INT31)
        else:
            # Absolute, so heap entries pushed before and after the origin moves compare alike.
            prog.key = prog.work + self.aging_per_s * prog.arrival
            if not prog.urgent:
                prog.priority = self._normal_priority(prog)
            if prog.deadline is not None and not prog.urgent:
                urgent_at = prog.deadline - self.deadline_margin_s
                if self.work_per_s is not None:
                    urgent_at -= prog.work / self.work_per_s
                _push(self._due, (urgent_at, prog.seq, prog.version, pid), len(self._programs), self._valid_due)
        if prog.running:
            self._priorities[pid] = prog.priority
        elif prog.urgent:
            assert prog.deadline is not None, "only programs with a deadline become urgent"
            _push(self._urgent, (prog.deadline, prog.seq, prog.version, pid), self._waiting, self._valid_waiting)
        else:
            _push(self._normal, (prog.key, prog.seq, prog.version, pid), self._waiting, self._valid_waiting)

    def _promote_due(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            entry = heapq.heappop(due)
            if not self._valid_due(entry):
                continue
            pid = entry[3]
            prog = self._programs[pid]
            prog.urgent = True
            prog.priority = self._urgent_priority(prog)
            prog.version += 1  # its entry in the normal queue is now stale
            self._rekey(pid, prog)

    def _normal_priority(self, prog: _Program) -> int:
        raw = self._normal_offset(prog)
        if raw > _INT31 and self._rebase():
            raw = self._normal_offset(prog)
        return min(max(raw, 0), _INT31)

    def _normal_offset(self, prog: _Program) -> int:
        assert self._origin is not None, "set by the first add"
        return int((prog.work + self.aging_per_s * (prog.arrival - self._origin)) // self.priority_quantum)

    def _urgent_priority(self, prog: _Program) -> int:
        raw = self._urgent_offset(prog)
        if raw > -_URGENT_BASE - 1 and self._rebase():
            raw = self._urgent_offset(prog)
        return _URGENT_BASE + min(max(raw, 0), -_URGENT_BASE - 1)

    def _urgent_offset(self, prog: _Program) -> int:
        assert prog.deadline is not None and self._origin is not None, "only programs with a deadline fall due"
        return int((prog.deadline - self._origin) / _DEADLINE_QUANTUM_S)

    def _rebase(self) -> bool:
        """Move the origin up to the earliest live arrival and recompute every live priority (each
        shifts by the same amount within its class, so order holds). False when it cannot move:
        then the live programs alone span more than the range, and priorities clamp at its end."""
        earliest = min(p.arrival for p in self._programs.values())
        if self._origin is not None and earliest <= self._origin:
            return False
        self._origin = earliest
        for pid, prog in self._programs.items():
            offset = self._urgent_offset(prog) if prog.urgent else self._normal_offset(prog)
            limit = -_URGENT_BASE - 1 if prog.urgent else _INT31
            prog.priority = (_URGENT_BASE if prog.urgent else 0) + min(max(offset, 0), limit)
            if prog.running:
                self._priorities[pid] = prog.priority
        return True

    def _pop_waiting(self) -> str:
        for heap in (self._urgent, self._normal):
            while heap:
                entry = heapq.heappop(heap)
                if self._valid_waiting(entry):
                    return entry[3]
        raise AssertionError("waiting count says a program waits, but no queue holds one")

    def _valid_waiting(self, entry: tuple[float, int, int, str]) -> bool:
        prog = self._programs.get(entry[3])
        return prog is not None and prog.seq == entry[1] and prog.version == entry[2] and not prog.running

    def _valid_due(self, entry: tuple[float, int, int, str]) -> bool:
        prog = self._programs.get(entry[3])
        return prog is not None and prog.seq == entry[1] and prog.version == entry[2] and not prog.urgent


def _check_max_running(max_running: int) -> None:
    if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
        raise ValueError(f"max_running: must be an integer >= 1, got {max_running!r}")


def _check_rate(work_per_s: float | None) -> None:
    if work_per_s is not None and not (math.isfinite(work_per_s) and work_per_s > 0):
        raise ValueError(f"work_per_s: must be finite and > 0 (or None), got {work_per_s!r}")


def _check_work(work: float) -> None:
    if not (math.isfinite(work) and work >= 0):
        raise ValueError(f"predicted_work: must be finite and >= 0, got {work!r}")


_Entry = tuple[float, int, int, str]


def _push(heap: list[_Entry], entry: _Entry, live: int, valid: Callable[[_Entry], bool]) -> None:
    """Push, and rebuild the heap from its valid entries once stale ones pile up (lazy deletion
    keeps each operation O(log n); the rebuild is amortized over the pushes that made it stale)."""
    heapq.heappush(heap, entry)
    if len(heap) > 2 * live + _COMPACT_SLACK:
        heap[:] = [e for e in heap if valid(e)]
        heapq.heapify(heap)
