"""`dynasor calibrate TRACES`: choose an allocation policy from programs recorded without early
stopping, by replaying every trace under candidate policies.

Each trace ran to its cap, so stopping it at any step is a prefix of what was recorded: the answer
and tokens at the stop are read off the history. The chosen ThresholdPolicy saves the most tokens
while accuracy drops by at most `--max-accuracy-drop` against running to the cap; a CurvePolicy is
fitted from (certaindex at detection, steps still needed until the answer settled for good).
Accuracy is agreement with `gold`; without gold, agreement with the trace's final answer (counted
correct only if the trace says the final answer was, when it says). No answer is never correct.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from scheduler_backend.allocation import AllocationPolicy, CurvePolicy, ThresholdPolicy, Verdict, policy_to_dict
from scheduler_backend.answers import answers_equal
from scheduler_backend.errors import RequestError

SETTLE_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(15))  # 0.30 .. 1.00
HOPELESS_GRID = (0.05, 0.1, 0.2, 0.3)
HOPELESS_STEP_FACTORS = (2, 4)  # hopeless_step = factor * detect_step
MAX_DETECT_STEPS = 16  # detect steps tried, spread over the steps the traces recorded


def replay(trace: dict[str, Any], policy: AllocationPolicy) -> tuple[int, str | None, int]:
    """Where `policy` would have stopped this capped run: (history index, answer, tokens used).
    A run the policy never stops ends at its last recorded step, as it did."""
    history = trace["history"]
    if not history:
        raise RequestError("history: empty, nothing to replay")
    budget = trace["budget"]
    for index, entry in enumerate(history):
        if policy.verdict(entry["certaindex"], entry["steps"], budget) is not Verdict.CONTINUE:
            return index, entry["answer"], entry["tokens_used"]
    last = history[-1]
    return len(history) - 1, last["answer"], last["tokens_used"]


def settle_index(trace: dict[str, Any]) -> int:
    """Index of the first history entry after which the answer never changes again."""
    history = trace["history"]
    final = history[-1]["answer"]
    index = len(history) - 1
    while index > 0 and _same(history[index - 1]["answer"], final):
        index -= 1
    return index


def _same(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return answers_equal(a, b)


def correctness(trace: dict[str, Any]) -> list[bool]:
    """Whether the answer after each step counts as correct (see the module docstring)."""
    history, gold, correct = trace["history"], trace.get("gold"), trace.get("correct")
    if gold is not None:
        return [e["answer"] is not None and answers_equal(e["answer"], gold) for e in history]
    final = history[-1]["answer"]
    return [correct is not False and answers_equal(e["answer"], final) for e in history]


@dataclass
class _Table:
    """The traces as padded arrays, so one candidate policy is judged on all of them at once."""

    steps: NDArray[Any]  # (programs, max history); -1 past a trace's end
    certaindex: NDArray[Any]  # NaN past the end
    tokens: NDArray[Any]
    correct: NDArray[Any]
    last: NDArray[Any]  # index of each trace's last entry
    budget: NDArray[Any]

    @classmethod
    def build(cls, traces: Sequence[dict[str, Any]]) -> _Table:
        n, width = len(traces), max(len(t["history"]) for t in traces)
        steps = np.full((n, width), -1, dtype=np.int64)
        cert = np.full((n, width), np.nan)
        tokens = np.zeros((n, width), dtype=np.int64)
        correct = np.zeros((n, width), dtype=bool)
        for row, trace in enumerate(traces):
            history = trace["history"]
            k = len(history)
            steps[row, :k] = [e["steps"] for e in history]
            cert[row, :k] = [e["certaindex"] for e in history]
            tokens[row, :k] = [e["tokens_used"] for e in history]
            correct[row, :k] = correctness(trace)
        last = np.array([len(t["history"]) - 1 for t in traces])
        budget = np.array([t["budget"] for t in traces])
        return cls(steps, cert, tokens, correct, last, budget)

    def stops(self, policy: ThresholdPolicy) -> NDArray[Any]:
        """History index where `policy` stops each trace; the same as `replay`, vectorized."""
        with np.errstate(invalid="ignore"):
            mask = (self.steps >= policy.detect_step) & (self.certaindex >= policy.settle)
            if policy.hopeless is not None:
                mask |= (self.steps >= policy.hopeless_step) & (self.certaindex <= policy.hopeless)
        rows = np.arange(len(self.last))
        mask[rows, self.last] = True
        stops: NDArray[Any] = mask.argmax(axis=1)
        return stops

    def outcome(self, stops: NDArray[Any]) -> tuple[int, float]:
        """Total tokens and accuracy when each trace stops at `stops`."""
        rows = np.arange(len(stops))
        return int(self.tokens[rows, stops].sum()), float(self.correct[rows, stops].mean())


def candidates(traces: Sequence[dict[str, Any]], hopeless: bool = True) -> list[ThresholdPolicy]:
    """The grid: settle thresholds x detect steps (x hopeless cuts), and first a policy that never
    stops early on these traces, so some candidate always meets the accuracy bound."""
    seen = sorted({e["steps"] for t in traces for e in t["history"] if e["steps"] >= 1})
    if len(seen) > MAX_DETECT_STEPS:
        seen = sorted({seen[round(i)] for i in np.linspace(0, len(seen) - 1, MAX_DETECT_STEPS)})
    out = [ThresholdPolicy(settle=1.0, detect_step=max(seen, default=0) + 1)]
    for detect in seen:
        for settle in SETTLE_GRID:
            out.append(ThresholdPolicy(settle=settle, detect_step=detect))
            if not hopeless:
                continue
            for factor in HOPELESS_STEP_FACTORS:
                if factor * detect > seen[-1]:
                    continue
                for cut in HOPELESS_GRID:
                    if cut < settle:
                        out.append(ThresholdPolicy(settle=settle, detect_step=detect, hopeless=cut, hopeless_step=factor * detect))
    return out


def _extra_fraction(table: _Table, stops: NDArray[Any], detect_step: int) -> float:
    """Share of the budget after detection that programs spent under the chosen policy: the
    scheduler's prior for a program that has not reached detection yet."""
    rows = np.arange(len(stops))
    detect = np.minimum(detect_step, table.budget)
    room = table.budget - detect
    used = np.clip(table.steps[rows, stops] - detect, 0, None)
    keep = room > 0
    if not keep.any():
        return 1.0
    return float(np.clip((used[keep] / room[keep]).mean(), 0.0, 1.0))


def fit_curve(traces: Sequence[dict[str, Any]], detect_step: int, hopeless: float | None = None,
              hopeless_step: int | None = None) -> CurvePolicy | None:
    """CurvePolicy from (certaindex at the detection step, steps from there until the answer
    settled for good); None when fewer than two traces reach the detection step."""
    cert, remaining = [], []
    for trace in traces:
        history = trace["history"]
        det = next((i for i, e in enumerate(history) if e["steps"] >= detect_step), None)
        if det is None:
            continue
        cert.append(history[det]["certaindex"])
        remaining.append(max(history[settle_index(trace)]["steps"] - history[det]["steps"], 0))
    if len(cert) < 2:
        return None
    return CurvePolicy.fit(cert, remaining, detect_step=detect_step, hopeless=hopeless, hopeless_step=hopeless_step)


def calibrate(traces: Sequence[dict[str, Any]], max_accuracy_drop: float = 0.01, hopeless: bool = True) -> dict[str, Any]:
    """The calibration document: the chosen threshold policy, the fitted curve, and a report."""
    if not traces:
        raise RequestError("no traces to calibrate on")
    table = _Table.build(traces)
    cap_stops = table.last
    cap_tokens, cap_accuracy = table.outcome(cap_stops)
    best, best_rank, best_stops = None, None, cap_stops
    for policy in candidates(traces, hopeless):
        stops = table.stops(policy)
        tokens, accuracy = table.outcome(stops)
        if accuracy < cap_accuracy - max_accuracy_drop - 1e-9:
            continue
        rank = (tokens, -accuracy, -policy.settle, policy.hopeless is not None)
        if best_rank is None or rank < best_rank:
            best, best_rank, best_stops = policy, rank, stops
    assert best is not None, "the never-stop candidate always meets the bound"
    best = ThresholdPolicy(settle=best.settle, detect_step=best.detect_step, hopeless=best.hopeless,
                           hopeless_step=best.hopeless_step,
                           extra_fraction=_extra_fraction(table, best_stops, best.detect_step))
    tokens, accuracy = table.outcome(best_stops)
    steps_seen = sorted({e["steps"] for t in traces for e in t["history"]})
    curve_detect = best.detect_step if best.detect_step <= steps_seen[-1] else steps_seen[0]
    curve = fit_curve(traces, max(curve_detect, 1), best.hopeless, best.hopeless_step)
    report: dict[str, Any] = {
        "programs": len(traces),
        "tokens_cap": cap_tokens,
        "tokens_policy": tokens,
        "tokens_saved_fraction": _saved(tokens, cap_tokens),
        "accuracy_cap": cap_accuracy,
        "accuracy_policy": accuracy,
    }
    if curve is not None:
        curve_stops = np.array([replay(t, curve)[0] for t in traces])
        curve_tokens, curve_accuracy = table.outcome(curve_stops)
        report.update(tokens_curve=curve_tokens, tokens_saved_fraction_curve=_saved(curve_tokens, cap_tokens),
                      accuracy_curve=curve_accuracy)
    return {
        "policy": policy_to_dict(best),
        "curve": None if curve is None else policy_to_dict(curve),
        "report": report,
    }


def _saved(tokens: int, cap_tokens: int) -> float:
    return 1.0 - tokens / cap_tokens if cap_tokens else 0.0


def _check_trace(trace: Any, where: str) -> dict[str, Any]:
    """A trace as the recorder writes it, or RequestError naming the first bad field."""
    def bad(field: str, why: str) -> RequestError:
        return RequestError(f"{where}: {field}: {why}")

    if not isinstance(trace, dict):
        raise bad("trace", f"expected a JSON object, got {type(trace).__name__}")
    for key, kinds in (("program", str), ("question", str), ("gold", (str, type(None))),
                       ("correct", (bool, type(None)))):
        if not isinstance(trace.get(key), kinds):
            raise bad(key, f"missing or of the wrong type ({trace.get(key)!r})")
    budget = trace.get("budget")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise bad("budget", f"expected an integer >= 1, got {budget!r}")
    history = trace.get("history")
    if not isinstance(history, list) or not history:
        raise bad("history", "expected a non-empty list")
    previous = -1
    for i, entry in enumerate(history):
        field = f"history[{i}]"
        if not isinstance(entry, dict):
            raise bad(field, "expected a JSON object")
        steps, cert, tokens = entry.get("steps"), entry.get("certaindex"), entry.get("tokens_used")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= previous:
            raise bad(f"{field}.steps", f"expected an integer above the previous entry's {previous}, got {steps!r}")
        if isinstance(cert, bool) or not isinstance(cert, (int, float)) or not math.isfinite(cert):
            raise bad(f"{field}.certaindex", f"expected a finite number, got {cert!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise bad(f"{field}.tokens_used", f"expected an integer >= 0, got {tokens!r}")
        if not isinstance(entry.get("answer"), (str, type(None))):
            raise bad(f"{field}.answer", f"expected a string or null, got {entry.get('answer')!r}")
        previous = steps
    return trace


def load_traces(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL trace file; blank lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise RequestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    traces = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            trace = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RequestError(f"{path}:{number}: not valid JSON: {exc}") from exc
        traces.append(_check_trace(trace, f"{path}:{number}"))
    return traces


def _describe(d: dict[str, Any] | None) -> str:
    if d is None:
        return "(not fitted)"
    if d["kind"] == "curve":
        text = f"curve a={d['a']:.3g} b={d['b']:.3g} detect={d['detect_step']}"
    else:
        text = f"threshold settle={d['settle']} detect={d['detect_step']}"
    if d.get("hopeless") is not None:
        text += f" hopeless<={d['hopeless']}@{d['hopeless_step']}"
    return text


def format_table(doc: dict[str, Any]) -> str:
    """The short table `main` prints."""
    r = doc["report"]
    rows = [("run to cap", r["tokens_cap"], 0.0, r["accuracy_cap"]),
            (_describe(doc["policy"]), r["tokens_policy"], r["tokens_saved_fraction"], r["accuracy_policy"])]
    if doc["curve"] is not None:
        rows.append((_describe(doc["curve"]), r["tokens_curve"], r["tokens_saved_fraction_curve"], r["accuracy_curve"]))
    width = max(len(name) for name, *_ in rows)
    lines = [f"{r['programs']} programs", f"{'allocation':<{width}}  {'tokens':>12}  {'saved':>6}  {'accuracy':>8}"]
    lines += [f"{name:<{width}}  {tokens:>12,}  {saved:>6.1%}  {acc:>8.3f}" for name, tokens, saved, acc in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dynasor calibrate", description="Choose an allocation policy by replaying programs recorded without early stopping.")
    parser.add_argument("traces", help="JSONL file of programs recorded with no early stopping")
    parser.add_argument("-o", "--output", default="calibration.json", help="where to write the calibration JSON")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01,
                        help="accuracy (a fraction, 0.01 = one point) the policy may lose against the cap")
    parser.add_argument("--program", help="calibrate only traces of this program (required when a file mixes programs)")
    parser.add_argument("--hopeless", action=argparse.BooleanOptionalAction, default=True,
                        help="also try cutting programs whose certaindex stays low")
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_accuracy_drop <= 1.0:
        parser.error(f"--max-accuracy-drop: must be in [0, 1], got {args.max_accuracy_drop}")
    try:
        traces = load_traces(args.traces)
        if args.program is not None:
            traces = [t for t in traces if t["program"] == args.program]
        programs = sorted({t["program"] for t in traces})
        if len(programs) > 1:
            raise RequestError(f"{args.traces}: traces of several programs ({', '.join(programs)}); "
                             "certaindex means something different in each: pick one with --program")
        if not traces:
            raise RequestError(f"{args.traces}: no traces" + (f" of program {args.program!r}" if args.program else ""))
        doc = calibrate(traces, args.max_accuracy_drop, args.hopeless)
    except RequestError as exc:
        print(f"dynasor calibrate: error: {exc}", file=sys.stderr)
        return 2
    Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    print(format_table(doc))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
