"""How many programs may run at once, chosen from the engine's measured capacity.

Running fewer programs at once concentrates the engine on them (with gang priorities and SJF,
short programs finish early); running too few leaves the engine's batch under-filled. The right
number is the smallest concurrency, in engine sequences in flight, that reaches nearly the
engine's best throughput, divided by the sequences one running program keeps in flight.

`ConcurrencyController` learns that from windows of (mean sequences in flight, tokens/s). Windows
fall in geometric buckets of sequences in flight (`ratio` apart); each bucket keeps an average of
its tokens/s and of its sequences (a mean over its first windows, then an EMA), and counts once
it has `min_windows` windows. Only tried buckets are known, so it moves one bucket at a time:

- up, while the largest bucket tried is faster than every smaller one by `min_gain` (more
  concurrency still pays; a curve that keeps rising is followed to the ceiling, a plateau is
  not chased for gains within its noise);
- otherwise to the *knee*: the smallest bucket whose tokens/s is at least `knee` x the best one's;
- down, when the knee is the smallest bucket tried (a smaller one might be just as fast).

A knee with a slower bucket below and a bucket tried above the best stays put: estimates of
buckets no longer visited do not move, so noise at the knee cannot walk the target away. The
target is clamped to [`min_seqs`, `max_seqs`] (the operator's ceiling, e.g. vLLM's max_num_seqs).

Pure logic, no clock: the caller decides what a window is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens_per_s: float
    seqs: float
    windows: int = 1


class ConcurrencyController:
    """Proposes `max_running` programs from throughput observations; `initial_programs` until
    it has measured enough."""

    def __init__(self, initial_programs: int = 16, max_seqs: float = 256.0, min_seqs: float = 1.0,
                 knee: float = 0.9, ratio: float = 2**0.5, min_gain: float = 0.05, alpha: float = 0.3,
                 min_windows: int = 2):
        if isinstance(initial_programs, bool) or not isinstance(initial_programs, int) or initial_programs < 1:
            raise ValueError(f"initial_programs: must be an integer >= 1, got {initial_programs!r}")
        if not (math.isfinite(min_seqs) and 0 < min_seqs <= max_seqs and math.isfinite(max_seqs)):
            raise ValueError(f"min_seqs, max_seqs: must be finite with 0 < min_seqs <= max_seqs, got {min_seqs!r}, {max_seqs!r}")
        if not 0 < knee <= 1:
            raise ValueError(f"knee: must be in (0, 1], got {knee!r}")
        if not (math.isfinite(ratio) and ratio * knee > 1):
            # Otherwise neighbouring buckets are always within the knee: even a linear curve looks flat.
            raise ValueError(f"ratio: must be finite and > 1 / knee, got {ratio!r} with knee {knee!r}")
        if not (math.isfinite(min_gain) and min_gain >= 0):
            raise ValueError(f"min_gain: must be finite and >= 0, got {min_gain!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha!r}")
        if min_windows < 1:
            raise ValueError(f"min_windows: must be >= 1, got {min_windows!r}")
        self.initial_programs = initial_programs
        self.max_seqs = float(max_seqs)
        self.min_seqs = float(min_seqs)
        self.knee = knee
        self.ratio = ratio
        self.min_gain = min_gain
        self.alpha = alpha
        self.min_windows = min_windows
        self.seqs_per_program: float | None = None  # EMA of sequences in flight per running program
        self._buckets: dict[int, _Bucket] = {}

    def observe(self, seqs_in_flight: float, tokens_per_s: float, running_programs: float = 0.0) -> None:
        """One window: its time-weighted mean sequences in flight, tokens/s, and mean programs
        running (0: unknown, the per-program estimate is left as it is). A window without
        sequences in flight says nothing about capacity and is ignored."""
        if not (math.isfinite(seqs_in_flight) and seqs_in_flight > 0 and math.isfinite(tokens_per_s) and tokens_per_s >= 0):
            return
        index = self._index(seqs_in_flight)
        bucket = self._buckets.get(index)
        if bucket is None:
            self._buckets[index] = _Bucket(tokens_per_s, seqs_in_flight)
        else:
            bucket.windows += 1
            weight = max(self.alpha, 1 / bucket.windows)  # a plain mean until the EMA has its span
            bucket.tokens_per_s += weight * (tokens_per_s - bucket.tokens_per_s)
            bucket.seqs += weight * (seqs_in_flight - bucket.seqs)
        if running_programs > 0:
            per = seqs_in_flight / running_programs
            seen = self.seqs_per_program
            self.seqs_per_program = per if seen is None else seen + self.alpha * (per - seen)

    def target_seqs(self) -> float | None:
        """Sequences in flight to aim for (None until a bucket counts)."""
        plan = self._plan()
        return None if plan is None else plan[0]

    @property
    def max_running(self) -> int:
        """Programs that may run at once: whole programs keeping at least the target in flight
        (a probe down: at most, or it would not leave its bucket), never a whole program past
        `max_seqs`."""
        plan = self._plan()
        per = self.seqs_per_program
        if plan is None or not per:
            return self.initial_programs
        seqs, down = plan
        programs = math.floor(seqs / per + 1e-9) if down else math.ceil(seqs / per - 1e-9)
        return max(1, min(programs, math.floor(self.max_seqs / per + 1e-9)))

    def _plan(self) -> tuple[float, bool] | None:
        """(target sequences, whether that probes below the knee), None until a bucket counts."""
        counted = sorted((i, b) for i, b in self._buckets.items() if b.windows >= self.min_windows)
        if not counted:
            return None
        top_index, top = counted[-1]
        if all(b.tokens_per_s * (1 + self.min_gain) < top.tokens_per_s for _, b in counted[:-1]):
            above = self._clamp(top.seqs * self.ratio)
            if self._index(above) > top_index:
                return above, False
        best = max(b.tokens_per_s for _, b in counted)
        knee_at = next(n for n, (_, b) in enumerate(counted) if b.tokens_per_s >= self.knee * best)
        knee_index, knee = counted[knee_at]
        below = self._clamp(knee.seqs / self.ratio)
        if knee_at == 0 and self._index(below) < knee_index:
            return below, True
        return knee.seqs, False

    def _index(self, seqs: float) -> int:
        return math.floor(math.log(seqs) / math.log(self.ratio))

    def _clamp(self, seqs: float) -> float:
        return min(max(seqs, self.min_seqs), self.max_seqs)
