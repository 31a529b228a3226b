"""What a load test measures, apart from Locust: open-loop Poisson arrivals and the per-class
summary under a deadline SLO (attainment, goodput, latency percentiles, accuracy, tokens).

Pure logic, no Locust or network import, so it is unit-tested on its own.

Definitions (the same for every user class, so they compare):
- a program *meets its deadline* when it ended without an error within `deadline_s + grace_s`
  of its arrival (the grace covers the response's trip back);
- it *attains the SLO* when it met its deadline and returned an answer;
- *goodput* is SLO-attaining programs per second of the test's duration;
- with a quality floor of k knob units, it *attains the SLO at the floor* when it attained the SLO
  with an answer resting on at least k finished samples (probed ones not counted): a guess made to
  beat the clock does not count; *correct goodput* is programs answered right in time per second.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def poisson_gap(rate_per_s: float, users: int, rng: random.Random) -> float:
    """Seconds until this user's next program: each of `users` users arrives as a Poisson process
    of rate `rate_per_s / users`, so together they are one of rate `rate_per_s` (open loop: the
    gap does not wait for earlier programs to finish)."""
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"program_rate: must be finite and > 0, got {rate_per_s!r}")
    return rng.expovariate(rate_per_s / max(users, 1))


def program_deadline(slo_scale: float, base_deadline_s: float) -> float:
    """The per-program deadline: the SLO scale times the base deadline (scale 1 is the base)."""
    for name, value in (("slo_scale", slo_scale), ("base_deadline_s", base_deadline_s)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be finite and > 0, got {value!r}")
    return slo_scale * base_deadline_s


@dataclass(frozen=True)
class Outcome:
    """What one program returned to its client: answer, tokens, whether its stream ended, and the
    stop reason, steps (samples) and probed samples when the server reports them."""

    answer: str | None = None
    tokens: int = 0
    ended: bool = True
    stop_reason: str = ""
    steps: int = 0
    probed: int = 0
    server: dict[str, Any] | None = None  # the server's own account in its final response (latency_s, received_at, sent_at)


@dataclass(frozen=True)
class ProgramRecord:
    """One program of the load test, as the summary needs it."""

    user_class: str
    latency_s: float
    deadline_s: float
    answer: str | None
    correct: bool
    tokens: int
    error: str = ""
    ended: bool = True  # False: the client gave up on a stream that never sent its final answer
    grace_s: float = 0.0
    question_id: str = ""
    stop_reason: str = ""  # as the server (or the baseline client) reports it
    steps: int = 0  # samples the answer was voted from
    probed: int = 0  # of them, answers probed out of unfinished samples at the deadline
    started_at: float = 0.0  # wall clock when the client sent it: with the server's stamps, where the time went
    ended_at: float = 0.0  # wall clock when the client had its answer (the same clock as the server's stamps,
    # which started_at + latency_s, a monotonic span, is not if the wall clock is adjusted meanwhile)
    server: dict[str, Any] | None = None  # the server's final progress details (dynasor only)
    floor: int = 0  # the quality floor the test holds answers to (knob units)

    @property
    def floor_met(self) -> bool:
        """The answer rests on at least `floor` finished samples (probed answers do not count)."""
        return self.answer is not None and self.steps - self.probed >= self.floor

    @property
    def attained_at_floor(self) -> bool:
        return self.attained and self.floor_met

    @property
    def deadline_met(self) -> bool:
        return not self.error and self.ended and self.latency_s <= self.deadline_s + self.grace_s

    @property
    def attained(self) -> bool:
        return self.deadline_met and self.answer is not None

    def failure(self) -> str:
        """Why the program counts against the SLO ("" when it attained it): Locust's exception."""
        if self.error:
            return self.error
        if not self.ended:
            return f"deadline missed: no final answer within {self.deadline_s + self.grace_s:.2f} s"
        if not self.deadline_met:
            return f"deadline missed: {self.latency_s:.2f} s > {self.deadline_s:.2f} s"
        if self.answer is None:
            return "no answer by the deadline"
        return ""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q: must be in [0, 100], got {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class ClassSummary:
    programs: int
    attainment: float  # fraction that met the deadline and answered
    goodput_per_s: float  # SLO-attaining programs per second of the test
    deadline_met: float  # fraction that met the deadline (answer or not)
    errors: int
    p50_latency_s: float
    p90_latency_s: float
    p99_latency_s: float
    accuracy: float  # fraction of all programs answered correctly
    mean_tokens: float
    floor: int = 0  # the quality floor of the test (knob units; 0: none)
    attainment_at_floor: float = 0.0  # fraction that met the deadline with an answer resting on the floor
    goodput_at_floor_per_s: float = 0.0
    correct_goodput_per_s: float = 0.0  # programs answered right by their deadline, per second
    below_floor: int = 0  # programs answered in time with an answer below the floor


def summarize(records: Iterable[ProgramRecord], duration_s: float) -> dict[str, ClassSummary]:
    """One summary per user class, over the programs that ended during the test."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s: must be finite and > 0, got {duration_s!r}")
    by_class: dict[str, list[ProgramRecord]] = {}
    for r in records:
        by_class.setdefault(r.user_class, []).append(r)
    out = {}
    for name, rs in sorted(by_class.items()):
        latencies = [r.latency_s for r in rs]
        attained = sum(r.attained for r in rs)
        at_floor = sum(r.attained_at_floor for r in rs)
        out[name] = ClassSummary(
            programs=len(rs),
            attainment=attained / len(rs),
            goodput_per_s=attained / duration_s,
            deadline_met=sum(r.deadline_met for r in rs) / len(rs),
            errors=sum(bool(r.error) for r in rs),
            p50_latency_s=percentile(latencies, 50),
            p90_latency_s=percentile(latencies, 90),
            p99_latency_s=percentile(latencies, 99),
            accuracy=sum(r.correct for r in rs) / len(rs),
            mean_tokens=sum(r.tokens for r in rs) / len(rs),
            floor=max(r.floor for r in rs),
            attainment_at_floor=at_floor / len(rs),
            goodput_at_floor_per_s=at_floor / duration_s,
            correct_goodput_per_s=sum(r.attained and r.correct for r in rs) / duration_s,
            below_floor=attained - at_floor,
        )
    return out


def summary_json(summary: dict[str, ClassSummary], settings: dict[str, Any], duration_s: float) -> str:
    """The summary file: the run's settings, its duration and one object per user class."""
    return json.dumps({"settings": settings, "duration_s": round(duration_s, 3),
                       "classes": {name: asdict(s) for name, s in summary.items()}}, indent=2)


def format_summary(summary: dict[str, ClassSummary]) -> str:
    """A fixed-width table, one row per user class, for the console at test stop."""
    header = (f"{'user class':<18}{'programs':>9}{'SLO att.':>9}{'at floor':>9}{'below':>6}{'goodput/s':>10}{'right/s':>8}"
              f"{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}{'accuracy':>9}{'tokens':>9}{'errors':>7}")
    rows = [header]
    for name, s in summary.items():
        rows.append(f"{name:<18}{s.programs:>9}{s.attainment:>9.1%}{s.attainment_at_floor:>9.1%}{s.below_floor:>6}"
                    f"{s.goodput_per_s:>10.3f}{s.correct_goodput_per_s:>8.3f}{s.p50_latency_s:>8.2f}{s.p90_latency_s:>8.2f}"
                    f"{s.p99_latency_s:>8.2f}{s.accuracy:>9.1%}{s.mean_tokens:>9.0f}{s.errors:>7}")
    return "\n".join(rows)
