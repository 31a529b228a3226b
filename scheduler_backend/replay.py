"""Trace replay: what any allocation policy would have spent and got on programs recorded to their
cap (scheduler_backend/traces.py).

A recorded program never stopped early, so stopping it at any consult is a prefix of what was
recorded. Self-consistency traces keep every sample, so a replay also reorders them: each question
is replayed under `orderings` seeded orderings of its samples (the recorded order first), and under
any round schedule (a first round of `detect_step` samples, then rounds of `round_size`, every sample
of a round paid for). Other programs replay along their recorded history.

Everything is a `Table` of programs x consults (certaindex, steps, tokens, correctness, answer), so a
policy's vectorized rule judges every program and ordering at once. Two references that are not
certaindex policies live here too: output-length allocation (stop once the samples so far are short,
the Dynasor paper's Figure 13 baseline) and an oracle that knows the gold answer.
"""
from __future__ import annotations

import argparse
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from scheduler_backend.allocation import AllocationPolicy, Floats, Ints
from scheduler_backend.answers import answers_equal, cluster_answers
from scheduler_backend.errors import RequestError

Bools = NDArray[np.bool_]
ORDERINGS = 10
SEED = 0
SELF_CONSISTENCY = "self-consistency"
# Programs whose samples vote (answers or behaviours): replayed per sample, in any order.
SAMPLE_VOTERS = (SELF_CONSISTENCY, "code")


@dataclass(frozen=True)
class Table:
    """Replayable programs as (rows, consults) arrays, each row padded with its last consult.

    For self-consistency every column is one more sample (`per_sample`), and a row is one ordering of
    one question's samples; otherwise the columns are the recorded history entries."""

    certaindex: Floats
    steps: Ints
    tokens: Floats  # spent so far
    correct: Bools  # the answer so far is right
    answer: Ints  # the answer so far, as a label within its question (-1: none), to see where it changes
    budget: Ints  # (rows,)
    ordering: Ints  # (rows,) which ordering of its question's samples
    per_sample: bool
    detect_step: int  # as recorded: the schedule the references replay
    round_size: int  # knob units between consults (self-consistency's rounds; the typical step elsewhere)

    @property
    def rows(self) -> int:
        return int(self.steps.shape[0])

    @property
    def orderings(self) -> int:
        return int(self.ordering.max()) + 1 if self.rows else 0

    def consults(self, detect_step: int) -> Ints:
        """Columns where a program is consulted: self-consistency's round ends (first round
        `detect_step`, then `round_size`, the last one cut by the samples there are); every
        history entry otherwise."""
        width = self.steps.shape[1]
        if not self.per_sample:
            return np.arange(width)
        ends = list(range(min(detect_step, width), width + 1, self.round_size))
        if not ends or ends[-1] != width:
            ends.append(width)
        return np.array(ends, dtype=np.int64) - 1

    def cap_column(self, budget: int) -> Ints:
        """Per row, the column where a program with this budget reaches its cap."""
        reached = self.steps >= budget
        column: Ints = np.where(reached.any(axis=1), reached.argmax(axis=1), self.steps.shape[1] - 1)
        return column


@dataclass(frozen=True)
class Outcome:
    """Where each row stopped (a column) and what it had then."""

    column: Ints
    steps: Ints
    tokens: Floats
    correct: Bools


def outcome(table: Table, column: Ints) -> Outcome:
    """Each row stopped at its `column`."""
    rows = np.arange(table.rows)
    return Outcome(column, table.steps[rows, column], table.tokens[rows, column], table.correct[rows, column])


def first_stop(codes: NDArray[Any]) -> Ints:
    """Index of each row's first nonzero code; the last index when there is none (the cap)."""
    stop = codes != 0
    stop[:, -1] = True
    index: Ints = stop.argmax(axis=1)
    return index


def replay(table: Table, policy: AllocationPolicy) -> Outcome:
    """Every row under `policy`, with the trace budgets; a self-consistency policy's first round is
    its detection step, as SelfConsistency.from_options makes it."""
    columns = table.consults(getattr(policy, "detect_step", table.steps.shape[1]))
    codes = policy.decide(table.certaindex[:, columns], table.steps[:, columns], table.budget)
    return outcome(table, columns[first_stop(codes)])


def uniform(table: Table, budget: int) -> Outcome:
    """Every row run to a fixed budget of `budget` knob units."""
    return outcome(table, table.cap_column(budget))


def by_length(table: Table, tokens_per_unit: float, detect_step: int | None = None) -> Outcome:
    """Output-length allocation: stop at the first consult from the detection step on where the
    program's tokens per knob unit so far (a sample's mean length, for self-consistency) are at most
    `tokens_per_unit`: short answers say the question is easy."""
    detect = table.detect_step if detect_step is None else detect_step
    columns = table.consults(detect)
    steps = table.steps[:, columns]
    short = (steps >= detect) & (table.tokens[:, columns] <= tokens_per_unit * np.maximum(steps, 1))
    return outcome(table, columns[first_stop(short)])


def oracle(table: Table, budget: int) -> Outcome:
    """The limit no real policy can beat: knowing the gold answer, stop at the first column (any
    sample count, not only a round's end) after which the program's correctness never changes
    before its cap, so it costs no accuracy against `uniform(table, budget)`."""
    cap = table.cap_column(budget)
    rows, width = np.arange(table.rows), table.steps.shape[1]
    final = table.correct[rows, cap]
    differs = (table.correct != final[:, None]) & (np.arange(width)[None, :] <= cap[:, None])
    last_differs = np.where(differs.any(axis=1), width - 1 - differs[:, ::-1].argmax(axis=1), -1)
    return outcome(table, last_differs + 1)


def settled_column(table: Table, columns: Ints) -> Ints:
    """Per row, the first of `columns` after which its answer never changes again (an index into
    `columns`): where a program could have stopped without changing its answer."""
    answers = table.answer[:, columns]
    differs = answers != answers[:, -1:]
    width = len(columns)
    settled: Ints = np.where(differs.any(axis=1), width - differs[:, ::-1].argmax(axis=1), 0)
    return settled


def per_ordering(table: Table, values: NDArray[Any]) -> Floats:
    """Mean of `values` (one per row) over the questions of each ordering."""
    counts = np.bincount(table.ordering, minlength=table.orderings)
    means: Floats = np.bincount(table.ordering, weights=values.astype(np.float64), minlength=table.orderings) / counts
    return means


def _labels(answers: Sequence[str | None]) -> Ints:
    """Each answer's cluster (equal answers share one), -1 for no answer."""
    labels = np.full(len(answers), -1, dtype=np.int64)
    for label, group in enumerate(cluster_answers(answers)):
        labels[group] = label
    return labels


def _pad(values: NDArray[Any], width: int) -> NDArray[Any]:
    """Rows padded to `width` columns with their last value."""
    if values.shape[-1] >= width:
        return values
    return np.concatenate([values, np.repeat(values[..., -1:], width - values.shape[-1], axis=-1)], axis=-1)


def orderings_of(trace: dict[str, Any], orderings: int, seed: int = SEED, draws: bool = False) -> Ints:
    """(orderings, samples) permutations of a trace's samples: the recorded order, then seeded
    shuffles keyed by the trace's id (the same for a question wherever it sits in a file).

    `draws`: seeded draws with replacement instead, every row one. Reorderings all share the recorded
    samples, so their spread is narrower than a live run's, which draws new ones; the spread of
    draws from the recorded answers stands in for that."""
    n = len(trace["samples"])
    key = zlib.crc32(str(trace["id"]).encode())
    if draws:
        rows = [np.random.default_rng((seed, key, k, n)).integers(0, n, n) for k in range(orderings)]
    else:
        rows = [np.arange(n)] + [np.random.default_rng((seed, key, k)).permutation(n) for k in range(1, orderings)]
    return np.array(rows, dtype=np.int64).reshape(orderings, n)


def _sample_rows(trace: dict[str, Any], orderings: int, seed: int, draws: bool = False) -> dict[str, NDArray[Any]]:
    """A self-consistency trace's rows, one per ordering: after each sample, the entropy
    certaindex and majority answer (scheduler_backend.certaindex.entropy_certaindex and
    answers.majority_answer, computed from counts: ties go to the answer that came first)."""
    samples = trace["samples"]
    n = len(samples)
    labels = _labels([s["answer"] for s in samples])
    kinds = max(int(labels.max()) + 1, 1)
    heads = [int(np.flatnonzero(labels == k)[0]) for k in range(int(labels.max()) + 1)]
    perms = orderings_of(trace, orderings, seed, draws)
    lab = labels[perms]
    seen = lab[..., None] == np.arange(kinds)
    counts = np.cumsum(seen, axis=1)
    nones = np.cumsum(lab < 0, axis=1)
    m = np.arange(1, n + 1, dtype=np.float64)
    share = counts / m[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(counts > 0, share * np.log(np.where(counts > 0, share, 1.0)), 0.0).sum(axis=-1)
        entropy += nones * np.log(m) / m
        certaindex = np.where(m >= 2, np.clip(1.0 - entropy / np.log(np.maximum(m, 2.0)), 0.0, 1.0), 0.0)
    first = np.where(seen.any(axis=1), seen.argmax(axis=1), n)
    score = np.where(counts > 0, counts * (n + 1) - first[:, None, :], -1)
    majority = np.where(counts.max(axis=-1) > 0, score.argmax(axis=-1), -1)
    if trace["gold"] is not None or all(s["correct"] is not None for s in samples):  # graded: gold or tests
        right = np.array([bool(samples[h]["correct"]) if samples[h]["correct"] is not None
                          else answers_equal(samples[h]["answer"], trace["gold"]) for h in heads] + [False], dtype=bool)
        correct = right[majority]  # label -1 reads the trailing False
    else:  # no gold: right when it agrees with where the ordering ends, unless the trace says that was wrong
        correct = (majority == majority[:, -1:]) & (majority >= 0) & (trace["correct"] is not False)
    tokens = np.cumsum(np.array([s["tokens"] for s in samples], dtype=np.float64)[perms], axis=1)
    steps = np.broadcast_to(np.arange(1, n + 1), (orderings, n))
    return {"certaindex": certaindex, "steps": steps, "tokens": tokens, "correct": correct, "answer": majority}


def _history_rows(trace: dict[str, Any]) -> dict[str, NDArray[Any]]:
    """A trace's one row along its recorded history."""
    history = trace["history"]
    labels = _labels([e["answer"] for e in history])
    correct = []
    for entry, label in zip(history, labels):
        if entry.get("correct") is not None:
            correct.append(bool(entry["correct"]))
        elif trace["gold"] is not None:
            correct.append(answers_equal(entry["answer"], trace["gold"]))
        else:
            correct.append(bool(label >= 0 and label == labels[-1] and trace["correct"] is not False))
    return {"certaindex": np.array([[e["certaindex"] for e in history]], dtype=np.float64),
            "steps": np.array([[e["steps"] for e in history]], dtype=np.int64),
            "tokens": np.array([[e["tokens_used"] for e in history]], dtype=np.float64),
            "correct": np.array([correct], dtype=bool), "answer": labels[None, :]}


def _option(traces: Sequence[dict[str, Any]], name: str, default: int) -> int:
    values = {int((t.get("options") or {}).get(name, default)) for t in traces}
    if len(values) > 1:
        raise RequestError(f"options.{name}: traces recorded with different values ({sorted(values)}); replay them apart")
    return values.pop()


def build_table(traces: Sequence[dict[str, Any]], orderings: int = ORDERINGS, seed: int = SEED,
                round_size: int | None = None, draws: bool = False) -> Table:
    """The table of traces of one program (checked by traces.check_trace); self-consistency traces
    with samples are replayed per sample under `orderings` orderings (`draws`: draws with
    replacement, see orderings_of), in rounds of `round_size` after the first (None: as recorded)."""
    if not traces:
        raise RequestError("no traces to replay")
    programs = sorted({t["program"] for t in traces})
    if len(programs) > 1:
        raise RequestError(f"traces of several programs ({', '.join(programs)}); certaindex means something "
                           "different in each: replay one program at a time")
    per_sample = programs[0] in SAMPLE_VOTERS and all(t.get("samples") for t in traces)
    detect = _option(traces, "detect_step", 4)
    if per_sample:
        parts = [_sample_rows(t, orderings, seed, draws) for t in traces]
        round_size = round_size or _option(traces, "round_size", 4)
    else:
        parts = [_history_rows(t) for t in traces]
        gaps = np.concatenate([np.diff(p["steps"][0]) for p in parts] + [np.array([1])])
        round_size = max(int(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1, 1)
    width = max(p["steps"].shape[1] for p in parts)
    arrays = {key: np.concatenate([_pad(p[key], width) for p in parts]) for key in parts[0]}
    counts = [p["steps"].shape[0] for p in parts]
    return Table(certaindex=arrays["certaindex"], steps=arrays["steps"].astype(np.int64), tokens=arrays["tokens"],
                 correct=arrays["correct"].astype(bool), answer=arrays["answer"].astype(np.int64),
                 budget=np.repeat([t["budget"] for t in traces], counts).astype(np.int64),
                 ordering=np.concatenate([np.arange(c) for c in counts]).astype(np.int64),
                 per_sample=per_sample, detect_step=detect, round_size=round_size)


def capped(table: Table, budget: int) -> Table:
    """The table of programs recorded with a larger budget, as if their cap had been `budget` knob
    units (self-consistency only: its samples are independent, so the first `budget` of an ordering
    are what a program of that budget would have drawn)."""
    if not table.per_sample:
        raise RequestError("a smaller budget replays only for self-consistency traces with samples")
    if not 1 <= budget <= int(table.budget.min()):
        raise RequestError(f"budget: must be in [1, {int(table.budget.min())}] (the recorded cap), got {budget}")
    return replace(table, certaindex=table.certaindex[:, :budget], steps=table.steps[:, :budget],
                   tokens=table.tokens[:, :budget], correct=table.correct[:, :budget], answer=table.answer[:, :budget],
                   budget=np.full(table.rows, budget, dtype=np.int64))


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The two replay knobs `dynasor replay` and `dynasor calibrate` share."""
    parser.add_argument("--orderings", type=int, default=ORDERINGS, help="sample orderings replayed per self-consistency question")
    parser.add_argument("--round-size", type=int, help="self-consistency rounds after the first, as the server will run "
                        "them (default: as recorded; every sample is in the trace, so any schedule replays)")


def check_replay_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse knob values below 1 with argparse's own error (exit 2)."""
    for name in ("orderings", "round_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
