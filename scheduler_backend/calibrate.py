"""`dynasor calibrate TRACES`: choose an allocation policy from programs recorded without early
stopping, by replaying them (scheduler_backend/replay.py) under candidate policies.

The traces are split by id (traces.split_of): everything is chosen and fitted on the "fit" half and
reported on the "eval" half, so the report is not graded on the questions it was tuned on. Chosen:
the ThresholdPolicy that saves the most tokens while accuracy drops by at most `--max-accuracy-drop`
against running to the cap, then (when allowed) a hopeless cut under the same bound; its job-size
predictor, fitted on what programs still spent at each certaindex under it; and a CurvePolicy fitted
from (certaindex at detection, knob units until the answer settled for good). A curve that cannot be
fitted is reported, not fatal: the threshold result is written all the same.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from scheduler_backend.allocation import AllocationPolicy, CurvePolicy, ThresholdPolicy, UniformPolicy, policy_to_dict
from scheduler_backend.budget_curve import Curve
from scheduler_backend.errors import RequestError
from scheduler_backend.replay import (
    ORDERINGS,
    Outcome,
    Table,
    add_replay_arguments,
    build_table,
    check_replay_arguments,
    per_ordering,
    replay,
    settled_column,
)
from scheduler_backend.traces import load_traces, split_of

SETTLE_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(15))  # 0.30 .. 1.00
HOPELESS_GRID = (0.05, 0.1, 0.2, 0.3)
HOPELESS_STEP_FACTORS = (2, 4)  # hopeless_step = factor * detect_step
MAX_DETECT_STEPS = 16  # detect steps tried, spread over the steps the traces recorded
SPLIT_RULE = "sha256(id)[0] < 128: fit, else eval"


@dataclass(frozen=True)
class Calibration:
    """What a calibration chose on the fit split, and what it could not do."""

    threshold: ThresholdPolicy
    curve: CurvePolicy | None
    notes: tuple[str, ...]


def _total(table: Table, result: Outcome) -> tuple[float, float]:
    """(tokens per question, accuracy), averaged over the orderings."""
    return float(per_ordering(table, result.tokens).mean()), float(per_ordering(table, result.correct).mean())


def detect_steps(table: Table) -> list[int]:
    """Detection steps worth trying: the steps the table has, at most MAX_DETECT_STEPS spread out."""
    seen = sorted({int(s) for s in np.unique(table.steps) if s >= 1})
    if len(seen) > MAX_DETECT_STEPS:
        seen = sorted({seen[round(i)] for i in np.linspace(0, len(seen) - 1, MAX_DETECT_STEPS)})
    return seen


def _best(table: Table, candidates: Sequence[ThresholdPolicy], floor: float) -> tuple[ThresholdPolicy, Outcome] | None:
    """The candidate that spends the fewest tokens with accuracy >= floor (ties: more accurate,
    stricter, no cut)."""
    best, best_rank = None, None
    for policy in candidates:
        result = replay(table, policy)
        tokens, accuracy = _total(table, result)
        if accuracy < floor - 1e-9:
            continue
        rank = (tokens, -accuracy, -policy.settle, policy.hopeless is not None)
        if best_rank is None or rank < best_rank:
            best, best_rank = (policy, result), rank
    return best


def choose_threshold(table: Table, max_accuracy_drop: float, hopeless: bool = True) -> tuple[ThresholdPolicy, Outcome]:
    """The threshold policy for `table`: settle x detection step first, then a hopeless cut for it,
    each under the accuracy bound against running to the cap. A policy that never stops early is
    always a candidate, so one always meets the bound."""
    _, cap_accuracy = _total(table, replay(table, UniformPolicy()))
    floor = cap_accuracy - max_accuracy_drop
    steps = detect_steps(table)
    never = ThresholdPolicy(settle=1.0, detect_step=max(steps, default=0) + 1)
    found = _best(table, [never] + [ThresholdPolicy(settle=s, detect_step=d) for d in steps for s in SETTLE_GRID], floor)
    assert found is not None, "the never-stop candidate always meets the bound"
    policy, result = found
    if hopeless:
        cuts = [replace(policy, hopeless=cut, hopeless_step=factor * policy.detect_step)
                for factor in HOPELESS_STEP_FACTORS if factor * policy.detect_step <= max(steps, default=0)
                for cut in HOPELESS_GRID if cut < policy.settle]
        with_cut = _best(table, [policy, *cuts], floor)
        if with_cut is not None:
            policy, result = with_cut
    return replace(policy, extra_fraction=extra_fraction(table, result, policy.detect_step)), result


def extra_fraction(table: Table, result: Outcome, detect_step: int) -> float:
    """Share of the budget after detection that programs spent under the chosen policy: the
    scheduler's prior for a program that has not reached detection yet."""
    detect = np.minimum(detect_step, table.budget)
    room = table.budget - detect
    used = np.clip(result.steps - detect, 0, None)
    keep = room > 0
    if not keep.any():
        return 1.0
    return float(np.clip((used[keep] / room[keep]).mean(), 0.0, 1.0))


def fit_predictor(table: Table, policy: ThresholdPolicy, result: Outcome) -> Curve:
    """The job-size predictor for `policy`: knob units programs still spent under it, from the
    certaindex at each consult from detection on where they went on. ValueError when it cannot be fitted."""
    columns = table.consults(policy.detect_step)
    steps, certaindex = table.steps[:, columns], table.certaindex[:, columns]
    going_on = (steps >= policy.detect_step) & (steps < result.steps[:, None])
    return Curve.fit(certaindex[going_on], (result.steps[:, None] - steps)[going_on])


def fit_curve(table: Table, detect_step: int, hopeless: float | None = None, hopeless_step: int | None = None) -> CurvePolicy:
    """CurvePolicy from (certaindex at the detection step, knob units from there until the answer
    settled for good); ValueError when it cannot be fitted."""
    columns = table.consults(detect_step)
    steps = table.steps[:, columns]
    reached = steps >= detect_step
    rows = np.flatnonzero(reached.any(axis=1))
    detected = reached.argmax(axis=1)[rows]
    settled = np.maximum(settled_column(table, columns)[rows], detected)
    certaindex = table.certaindex[:, columns][rows, detected]
    needed = steps[rows, settled] - steps[rows, detected]
    return CurvePolicy.fit(certaindex, needed, detect_step=detect_step, hopeless=hopeless, hopeless_step=hopeless_step)


def calibrate_table(table: Table, max_accuracy_drop: float = 0.01, hopeless: bool = True,
                    curve_detect_step: int | None = None) -> Calibration:
    """Choose and fit every policy on `table` (the fit split); the curve is fitted at
    `curve_detect_step`, by default the chosen threshold's detection step."""
    notes = []
    threshold, result = choose_threshold(table, max_accuracy_drop, hopeless)
    try:
        threshold = replace(threshold, predictor=fit_predictor(table, threshold, result))
    except ValueError as exc:
        notes.append(f"threshold predictor not fitted ({exc}): the scheduler sizes jobs by the settle distance")
    seen = detect_steps(table)
    detect = curve_detect_step or (threshold.detect_step if threshold.detect_step <= seen[-1] else seen[0])
    cut = threshold.hopeless is not None and threshold.hopeless_step is not None and threshold.hopeless_step >= detect
    curve = None
    try:
        curve = fit_curve(table, detect, threshold.hopeless if cut else None, threshold.hopeless_step if cut else None)
    except ValueError as exc:
        notes.append(f"curve not fitted ({exc}); the threshold policy is written without it")
    if curve is not None:
        curve = choose_curve_settle(table, curve, max_accuracy_drop)
    return Calibration(threshold, curve, tuple(notes))


def choose_curve_settle(table: Table, curve: CurvePolicy, max_accuracy_drop: float) -> CurvePolicy:
    """The curve with the settle threshold at detection (none, or one of SETTLE_GRID) that spends
    the fewest tokens while accuracy drops by at most `max_accuracy_drop` against the curve alone:
    programs whose first samples agree stop there, at any budget."""
    _, floor = _total(table, replay(table, curve))
    best, best_tokens = curve, _total(table, replay(table, curve))[0]
    for settle in SETTLE_GRID:
        candidate = replace(curve, settle=settle)
        tokens, accuracy = _total(table, replay(table, candidate))
        if accuracy >= floor - max_accuracy_drop - 1e-9 and tokens < best_tokens - 1e-9:
            best, best_tokens = candidate, tokens
    return best


def evaluate(table: Table, calibration: Calibration) -> list[dict[str, Any]]:
    """Tokens per question and accuracy on `table` of running to the cap and of each chosen policy."""
    policies: list[tuple[str, AllocationPolicy]] = [("run to cap", UniformPolicy()), (describe(calibration.threshold), calibration.threshold)]
    if calibration.curve is not None:
        dynamic = replace(calibration.curve, dynamic=True)
        policies += [(describe(calibration.curve), calibration.curve), (describe(dynamic), dynamic)]
    totals = [(name, *_total(table, replay(table, policy))) for name, policy in policies]
    cap = totals[0][1]
    return [{"allocation": name, "tokens_per_question": tokens, "accuracy": accuracy,
             "saved": 1.0 - tokens / cap if cap else 0.0} for name, tokens, accuracy in totals]


def describe(policy: AllocationPolicy) -> str:
    """A policy in a few words, for tables."""
    if isinstance(policy, ThresholdPolicy):
        every = {1: "", None: " once"}.get(policy.check_every, f" every {policy.check_every}")
        text = f"threshold settle={policy.settle:g} detect={policy.detect_step}{every}"
    elif isinstance(policy, CurvePolicy):
        text = f"curve{' dynamic' if policy.dynamic else ''} a={policy.a:.3g} b={policy.b:.3g} detect={policy.detect_step}"
        if policy.settle is not None:
            text += f" settle={policy.settle:g}"
    else:
        return policy.kind
    if getattr(policy, "hopeless", None) is not None:
        text += f" hopeless<={policy.hopeless:g}@{policy.hopeless_step}"
    return text


def split(traces: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The traces of each split."""
    out: dict[str, list[dict[str, Any]]] = {"fit": [], "eval": []}
    for trace in traces:
        out[split_of(trace["id"])].append(trace)
    return out


def calibrate(traces: Sequence[dict[str, Any]], max_accuracy_drop: float = 0.01, hopeless: bool = True,
              orderings: int = ORDERINGS, round_size: int | None = None) -> dict[str, Any]:
    """The calibration document: chosen on the fit split, reported on the eval split (for
    self-consistency replayed in rounds of `round_size` after the first; None: as recorded)."""
    halves = split(traces)
    if not halves["fit"]:
        raise RequestError(f"no traces in the fit split ({SPLIT_RULE}) to calibrate on")
    fit = build_table(halves["fit"], orderings, round_size=round_size)
    calibration = calibrate_table(fit, max_accuracy_drop, hopeless)
    notes = list(calibration.notes)
    report: dict[str, Any] = {"split": "eval", "programs": len(halves["eval"]), "rows": []}
    if halves["eval"]:
        report["rows"] = evaluate(build_table(halves["eval"], orderings, round_size=round_size), calibration)
    else:
        notes.append("no traces in the eval split: nothing to report on")
    return {
        "policy": policy_to_dict(calibration.threshold),
        "curve": None if calibration.curve is None else policy_to_dict(calibration.curve),
        "split": {"rule": SPLIT_RULE, "fit": len(halves["fit"]), "eval": len(halves["eval"]), "orderings": orderings,
                  "round_size": fit.round_size if fit.per_sample else None},
        "report": report,
        "notes": notes,
    }


def format_table(doc: dict[str, Any]) -> str:
    """The short table `main` prints."""
    s, r = doc["split"], doc["report"]
    lines = [f"fit on {s['fit']} programs, reported on {s['eval']} held-out programs ({s['orderings']} sample orderings)"]
    if r["rows"]:
        width = max(len(row["allocation"]) for row in r["rows"])
        lines.append(f"{'allocation':<{width}}  {'tokens/question':>15}  {'saved':>6}  {'accuracy':>8}")
        lines += [f"{row['allocation']:<{width}}  {row['tokens_per_question']:>15,.0f}  {row['saved']:>6.1%}  {row['accuracy']:>8.3f}"
                  for row in r["rows"]]
    lines += [f"note: {note}" for note in doc["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dynasor calibrate", description="Choose an allocation policy by replaying programs recorded without early stopping.")
    parser.add_argument("traces", nargs="+", help="JSONL files of programs recorded with no early stopping")
    parser.add_argument("-o", "--output", default="calibration.json", help="where to write the calibration JSON")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01,
                        help="accuracy (a fraction, 0.01 = one point) the policy may lose against the cap")
    parser.add_argument("--program", help="calibrate only traces of this program (required when the files mix programs)")
    parser.add_argument("--hopeless", action=argparse.BooleanOptionalAction, default=True,
                        help="also try cutting programs whose certaindex stays low")
    add_replay_arguments(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_accuracy_drop <= 1.0:
        parser.error(f"--max-accuracy-drop: must be in [0, 1], got {args.max_accuracy_drop}")
    check_replay_arguments(parser, args)
    try:
        traces = [t for path in args.traces for t in load_traces(path)]
        if args.program is not None:
            traces = [t for t in traces if t["program"] == args.program]
        programs = sorted({t["program"] for t in traces})
        if len(programs) > 1:
            raise RequestError(f"{', '.join(args.traces)}: traces of several programs ({', '.join(programs)}); "
                               "certaindex means something different in each: pick one with --program")
        if not traces:
            raise RequestError(f"{', '.join(args.traces)}: no traces" + (f" of program {args.program!r}" if args.program else ""))
        doc = {"program": programs[0], **calibrate(traces, args.max_accuracy_drop, args.hopeless, args.orderings, args.round_size)}
    except RequestError as exc:
        print(f"dynasor calibrate: error: {exc}", file=sys.stderr)
        return 2
    Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    print(format_table(doc))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
