"""Token-to-accuracy trade-offs of every allocation policy on replayed traces (the Dynasor paper's
Figure 8), and the tokens each needs to match the best accuracy of a uniform budget (its Table 4).

Each policy's knob is swept: uniform its budget, thresholds their settle value, curves a scale on
the curve fitted on the fit split, output-length allocation its tokens-per-sample bound, the oracle
its budget. Every point is a mean over the sample orderings, with their standard deviation. And a
shipped policy on data sets it was not fitted on, paired with the uniform budget sample by sample.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from scheduler_backend.allocation import AllocationPolicy, CurvePolicy, ThresholdPolicy
from scheduler_backend.calibrate import SPLIT_RULE, Calibration, calibrate_table, describe, split
from scheduler_backend.errors import RequestError
from scheduler_backend.replay import ORDERINGS, Outcome, Table, build_table, by_length, capped, oracle, per_ordering, replay, uniform

SETTLE_SWEEP = tuple(round(0.05 * i, 2) for i in range(21))  # 0.00 .. 1.00
CURVE_SCALES = tuple(round(float(2.0 ** e), 4) for e in np.arange(-3.0, 3.01, 0.5))  # 1/8 .. 8
LENGTH_QUANTILES = tuple(round(0.05 * i, 2) for i in range(21))
CHECK_ROUNDS = 2  # the sparse threshold checks every CHECK_ROUNDS rounds
NEAR = 0.01  # the second target: one point of accuracy below uniform's best, less at the mercy of its noise


@dataclass(frozen=True)
class Point:
    knob: float
    tokens: float  # per question, mean over orderings
    tokens_std: float
    accuracy: float
    accuracy_std: float


@dataclass(frozen=True)
class Sweep:
    name: str
    knob: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Reach:
    """Tokens per question a policy needs to reach `target` accuracy (None: it never does)."""

    name: str
    tokens: float | None
    vs_uniform: float | None
    vs_oracle: float | None
    best_accuracy: float


def point(table: Table, knob: float, result: Outcome) -> Point:
    """One knob setting's tokens and accuracy, mean and spread over the orderings."""
    tokens, correct = per_ordering(table, result.tokens), per_ordering(table, result.correct)
    spread = 1 if len(tokens) > 1 else 0
    return Point(knob, float(tokens.mean()), float(tokens.std(ddof=spread)), float(correct.mean()),
                 float(correct.std(ddof=spread)))


def _sweep(table: Table, name: str, knob: str, values: Sequence[float], run: Callable[[float], Outcome]) -> Sweep:
    return Sweep(name, knob, tuple(point(table, v, run(v)) for v in values))


def sweeps(table: Table, calibration: Calibration) -> list[Sweep]:
    """Every policy's trade-off curve on `table`; the curves use `calibration` (fitted on other questions)."""
    detect = table.detect_step
    budgets = list(range(1, int(table.budget.max()) + 1))
    every = CHECK_ROUNDS * table.round_size
    out = [
        _sweep(table, "uniform", "budget", budgets, lambda b: uniform(table, int(b))),
        _sweep(table, "threshold", "settle", SETTLE_SWEEP,
               lambda s: replay(table, ThresholdPolicy(settle=s, detect_step=detect))),
        _sweep(table, "threshold, once at detection", "settle", SETTLE_SWEEP,
               lambda s: replay(table, ThresholdPolicy(settle=s, detect_step=detect, check_every=None))),
        _sweep(table, f"threshold, every {every}", "settle", SETTLE_SWEEP,
               lambda s: replay(table, ThresholdPolicy(settle=s, detect_step=detect, check_every=every))),
    ]
    cut = calibration.threshold
    if cut.hopeless is not None:
        out.append(_sweep(table, f"threshold + hopeless<={cut.hopeless:g}@{cut.hopeless_step}", "settle",
                          [s for s in SETTLE_SWEEP if s > cut.hopeless],
                          lambda s: replay(table, ThresholdPolicy(settle=s, detect_step=detect, hopeless=cut.hopeless,
                                                                  hopeless_step=max(cut.hopeless_step or detect, detect)))))
    if calibration.curve is not None:
        curve = replace(calibration.curve, hopeless=None, hopeless_step=None)
        for dynamic in (False, True):
            out.append(_sweep(table, "curve, dynamic" if dynamic else "curve", "scale", CURVE_SCALES,
                              _scaled(table, replace(curve, dynamic=dynamic))))
    columns = table.consults(detect)
    per_unit = (table.tokens[:, columns] / np.maximum(table.steps[:, columns], 1))[table.steps[:, columns] >= detect]
    if per_unit.size:  # bounds from the lengths programs had at their consults: from stopping all to none
        bounds = [float(np.quantile(per_unit, q)) for q in LENGTH_QUANTILES]
        out.append(_sweep(table, "output length", "tokens/unit", bounds, lambda t: by_length(table, t, detect)))
    out.append(_sweep(table, "oracle", "budget", budgets, lambda b: oracle(table, int(b))))
    return out


def _scaled(table: Table, curve: CurvePolicy) -> Callable[[float], Outcome]:
    """Replay of `curve` with its budgets scaled by a factor."""
    return lambda scale: replay(table, replace(curve, a=curve.a * scale))


def tokens_at(points: Sequence[Point], target: float) -> float | None:
    """Tokens per question at which a sweep first reaches `target` accuracy, interpolated linearly
    from the point before it (in token order); None if it never does."""
    ordered = sorted(points, key=lambda p: p.tokens)
    for i, p in enumerate(ordered):
        if p.accuracy >= target - 1e-12:
            if i == 0:
                return p.tokens
            q = ordered[i - 1]
            share = (target - q.accuracy) / (p.accuracy - q.accuracy) if p.accuracy > q.accuracy else 1.0
            return q.tokens + min(max(share, 0.0), 1.0) * (p.tokens - q.tokens)
    return None


def reach(all_sweeps: Sequence[Sweep], below: float = 0.0) -> tuple[float, list[Reach]]:
    """The target (uniform's best accuracy less `below`) and what every policy needs to reach it,
    as ratios to uniform and to the oracle."""
    by_name = {s.name: s for s in all_sweeps}
    target = max(p.accuracy for p in by_name["uniform"].points) - below
    base = tokens_at(by_name["uniform"].points, target)
    limit = tokens_at(by_name["oracle"].points, target) if "oracle" in by_name else None
    rows = []
    for s in all_sweeps:
        tokens = tokens_at(s.points, target)
        rows.append(Reach(s.name, tokens, None if tokens is None or not base else tokens / base,
                          None if tokens is None or not limit else tokens / limit, max(p.accuracy for p in s.points)))
    return target, rows


def _cells(r: Reach) -> tuple[str, str, str]:
    return ("never" if r.tokens is None else f"{r.tokens:,.0f}", "-" if r.vs_uniform is None else f"{r.vs_uniform:.2f}",
            "-" if r.vs_oracle is None else f"{r.vs_oracle:.2f}")


def format_reach(target: float, rows: Sequence[Reach], near: Sequence[Reach] = ()) -> str:
    """The Table 4 analogue as aligned text; `near` adds the same at a target NEAR lower."""
    width = max(len(r.name) for r in rows)
    head = f"{'policy':<{width}}  {'tokens':>9}  {'x uniform':>9}  {'x oracle':>8}"
    title = f"tokens per question to reach uniform's best accuracy ({target:.3f})"
    if near:
        head += f"  {'tokens':>9}  {'x uniform':>9}  {'x oracle':>8}"
        title += f", then {NEAR:.2f} less ({target - NEAR:.3f})"
    lines = [title, head + f"  {'best acc':>8}"]
    for i, r in enumerate(rows):
        cells = _cells(r) + (_cells(near[i]) if near else ())
        lines.append(f"{r.name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, (9, 9, 8) * 2))
                     + f"  {r.best_accuracy:>8.3f}")
    return "\n".join(lines)


def format_calibration(calibration: Calibration) -> str:
    """What the fit split gave the fitted sweeps."""
    lines = [f"fitted on the fit split: {describe(calibration.threshold)}"]
    if calibration.curve is not None:
        lines.append(f"fitted on the fit split: {describe(calibration.curve)}")
    lines += [f"note: {n}" for n in calibration.notes]
    return "\n".join(lines)


@dataclass(frozen=True)
class Analysis:
    """One program's trade-offs on one split, with the calibration its fitted sweeps used."""

    program: str
    split: str
    questions: int
    orderings: int
    detect_step: int  # where the swept policies first look (self-consistency's first round)
    round_size: int | None  # self-consistency's replayed rounds after the first; None along histories
    calibration: Calibration
    sweeps: list[Sweep]
    target: float
    reach: list[Reach]
    near: list[Reach]  # at target - NEAR


def analyse(traces: Sequence[dict[str, Any]], on: str = "eval", orderings: int = ORDERINGS,
            round_size: int | None = None, budget: int | None = None) -> Analysis:
    """Calibrate on the fit split and sweep every policy on split `on` ("eval", "fit" or "all";
    "eval" is the honest one: the fitted policies never saw those questions). Self-consistency
    replays in rounds of `round_size` after the first (None: as recorded), and with a cap of
    `budget` samples where given (None: the recorded one)."""
    halves = split(traces)
    if not halves["fit"]:
        raise RequestError(f"no traces in the fit split ({SPLIT_RULE}): nothing to fit the curves on")
    chosen = list(traces) if on == "all" else halves[on]
    if not chosen:
        raise RequestError(f"no traces in the {on} split ({SPLIT_RULE})")
    fit = build_table(halves["fit"], orderings, round_size=round_size)
    table = build_table(chosen, orderings, round_size=round_size)
    if budget is not None:
        fit, table = capped(fit, budget), capped(table, budget)
    calibration = calibrate_table(fit, curve_detect_step=fit.detect_step)  # the curves sweep at the recorded schedule
    all_sweeps = sweeps(table, calibration)
    target, rows = reach(all_sweeps)
    _, near = reach(all_sweeps, NEAR)
    return Analysis(chosen[0]["program"], on, len(chosen), table.orderings, table.detect_step,
                    table.round_size if table.per_sample else None,
                    calibration, all_sweeps, target, rows, near)


@dataclass(frozen=True)
class Transfer:
    """A policy on programs it was not fitted on, against the uniform budget on the same samples:
    a question is lost when the cap's answer was right and the policy's, drawn from a prefix of
    the same samples, is not, so sampling luck cannot pass for a loss or a gain."""

    questions: int
    orderings: int
    tokens_ratio: float  # the policy's tokens over the cap's, mean over orderings
    tokens_ratio_max: float
    lost_per_16: float  # questions lost per 16, mean over orderings
    lost_per_16_max: float
    gained_per_16: float
    accuracy_uniform: float
    accuracy_policy: float


def transfer(table: Table, policy: AllocationPolicy) -> Transfer:
    """`policy` replayed on `table` against every program run to its cap, ordering by ordering."""
    chosen, cap = replay(table, policy), uniform(table, int(table.budget.max()))
    ratio = per_ordering(table, chosen.tokens) / per_ordering(table, cap.tokens)
    lost = per_ordering(table, cap.correct & ~chosen.correct) * 16
    gained = per_ordering(table, chosen.correct & ~cap.correct) * 16
    return Transfer(table.rows // max(table.orderings, 1), table.orderings, float(ratio.mean()), float(ratio.max()),
                    float(lost.mean()), float(lost.max()), float(gained.mean()),
                    float(per_ordering(table, cap.correct).mean()), float(per_ordering(table, chosen.correct).mean()))
