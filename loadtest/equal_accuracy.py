"""Sustainable rate and tightest SLO at equal accuracy: the comparison the paper's online claim
means ("same accuracy, higher rate or tighter SLO"), on sweep rows of loadtest/simulator.py or of
a real run (loadtest/slo.py's summary, one row per system x rate x SLO scale).

A system's *limit* along a sweep is how far it goes (highest rate, or tightest SLO scale) while
at least `target` of its programs get an answer that meets the quality floor by their deadline
(`attainment_at_floor`); the baseline's accuracy there is the reference. Dynasor's limit *at equal
accuracy* also stops where its accuracy (right answers over every program that arrived, refused
ones counted as not right) falls below that reference by more than one standard error of the
difference of two accuracies measured on that many programs: a point it attains only by answering
worse does not count, a difference the measurement cannot tell from noise does not decide.
Between tested points both curves are read linearly.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TARGET = 0.9
ALONG = {"rate": "slo_scale", "slo_scale": "rate"}  # the swept key -> the key held fixed


def binomial_se(p: float, n: int) -> float:
    """The standard error of a proportion `p` measured on `n` programs."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else math.nan


@dataclass(frozen=True)
class Limit:
    """How far one system goes along a sweep: `value` is the rate or SLO scale (None: not even the
    easiest point tested qualifies), `accuracy` the accuracy read there, `bound_by` what stops it
    ("attainment", "accuracy", or "range" when nothing did within the points tested)."""

    value: float | None
    accuracy: float | None
    bound_by: str


def _curve(rows: Sequence[Mapping[str, Any]], system: str, along: str, fixed: float, key: str) -> list[tuple[float, float]]:
    """(x, y) from the easiest point to the hardest: x is the rate, or minus the SLO scale, so
    that x grows as the load gets harder either way."""
    sign = 1.0 if along == "rate" else -1.0
    return sorted((sign * r[along], r[key]) for r in rows if r["system"] == system and r[ALONG[along]] == fixed)


def last_at(points: list[tuple[float, float]], target: float) -> float | None:
    """Where y, falling along x, first drops below `target`: the largest x still at it (linear
    between points; the last x when it never drops); None when the first point already misses it."""
    if not points or points[0][1] < target:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 < target:
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    return points[-1][0]


def _read(points: list[tuple[float, float]], x: float) -> float:
    """y at x, linear between the tested points (clamped at the ends)."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def limit(rows: Sequence[Mapping[str, Any]], system: str, along: str, fixed: float, *, target: float = TARGET,
          accuracy_at_least: float | None = None) -> Limit:
    """`system`'s limit along `along` ("rate" or "slo_scale", the other key held at `fixed`): where
    its attainment at the floor drops below `target`, or, given `accuracy_at_least`, where its
    accuracy drops below that, whichever comes first."""
    if along not in ALONG:
        raise ValueError(f"along: must be one of {sorted(ALONG)}, got {along!r}")
    attain = _curve(rows, system, along, fixed, "attainment_at_floor")
    if not attain:
        raise ValueError(f"no rows of {system!r} at {ALONG[along]} = {fixed:g}")
    accuracy = _curve(rows, system, along, fixed, "accuracy")
    found = {"attainment": last_at(attain, target)}
    if accuracy_at_least is not None:
        found["accuracy"] = last_at(accuracy, accuracy_at_least - 1e-9)
    ends = {k: v for k, v in found.items() if v is not None}
    if len(ends) < len(found):
        return Limit(None, None, next(k for k in found if k not in ends))
    x = min(ends.values())
    bound_by = "range" if x >= attain[-1][0] else min(ends, key=ends.__getitem__)
    sign = 1.0 if along == "rate" else -1.0
    return Limit(sign * x, _read(accuracy, x), bound_by)


@dataclass(frozen=True)
class Comparison:
    """Dynasor against the baseline along one sweep: the baseline's limit (its accuracy there is
    the reference), dynasor's limit held to that accuracy, and dynasor's without it."""

    along: str
    fixed: float
    baseline: Limit
    dynasor: Limit
    dynasor_any_accuracy: Limit
    tolerance: float  # how far below the baseline's accuracy still counts as equal (one s.e. of the difference)

    @property
    def ratio(self) -> float | None:
        """Dynasor's advantage at equal accuracy (> 1: better): rate over rate, or the baseline's
        SLO scale over dynasor's."""
        b, d = self.baseline.value, self.dynasor.value
        if b is None or d is None or b <= 0 or d <= 0:
            return None
        return d / b if self.along == "rate" else b / d


def compare(rows: Sequence[Mapping[str, Any]], along: str, fixed: float, *, target: float = TARGET,
            system: str = "dynasor") -> Comparison:
    """`system` (dynasor, or a step of the ablation) against the baseline at equal accuracy."""
    base = limit(rows, "baseline", along, fixed, target=target)
    free = limit(rows, system, along, fixed, target=target)
    if base.accuracy is None:
        return Comparison(along, fixed, base, free, free, 0.0)
    n = min(int(r["programs"]) for r in rows if r[ALONG[along]] == fixed and r["system"] in ("baseline", system))
    tolerance = math.sqrt(2.0) * binomial_se(base.accuracy, n)
    held = limit(rows, system, along, fixed, target=target, accuracy_at_least=base.accuracy - tolerance)
    return Comparison(along, fixed, base, held, free, tolerance)
