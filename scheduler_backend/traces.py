"""Certaindex traces: programs run to their cap and what each step gave kept, the input of
`dynasor replay` and `dynasor calibrate` (`dynasor record`, client/record.py, runs it on the
direct vLLM engine). Programs run with a policy that never stops early, so a replay can stop them
anywhere; self-consistency traces keep every sample (answer, tokens, correctness), so a replay can
also reorder them. No generated text is kept: traces stay small enough to commit.

One JSON object per line (TRACE_FORMAT):
  {"format", "id", "program", "question", "gold", "level", "budget", "options", "stop_reason", "correct",
   "samples": [{"answer", "tokens", "finish_reason", "correct"}, ...],   # generation steps' samples
   "rewards": [[score, ...], ...],                                       # reward-model steps
   "history": [{"steps", "certaindex", "answer", "tokens_used", "correct"}, ...]}  # after each step
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scheduler_backend.allocation import UniformPolicy
from scheduler_backend.answers import answers_equal
from scheduler_backend.code_behaviour import passes_tests
from scheduler_backend.errors import RequestError
from scheduler_backend.program import ProgramState, StepResult, StopReason
from scheduler_backend.programs import CodeConsistency
from scheduler_backend.programs.base import PolicyProgram, sample_answer
from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler

TRACE_FORMAT = "dynasor-trace/2"
SPLITS = ("fit", "eval")


def is_right(answer: str | None, gold: str | None) -> bool | None:
    """Correctness against gold; None when there is no gold to judge by."""
    if gold is None:
        return None
    return answer is not None and answers_equal(answer, gold)


def answer_correct(trace: Mapping[str, Any], answer: str | None) -> bool:
    """Whether `answer` to a trace's question is right: against its gold, or, for a trace graded per
    sample (code: a behaviour fingerprint), as the first recorded sample that gave it was graded
    (the sample a replay takes for its cluster)."""
    if trace.get("gold") is not None:
        return is_right(answer, trace["gold"]) is True
    return answer is not None and next((bool(s["correct"]) for s in trace.get("samples", [])
                                        if s["answer"] == answer and s["correct"] is not None), False)


def _history_entry(state: ProgramState, gold: str | None) -> dict[str, Any]:
    return {"steps": state.steps, "certaindex": state.certaindex, "answer": state.answer,
            "tokens_used": state.tokens_used, "correct": is_right(state.answer, gold)}


def split_of(trace_id: Any) -> str:
    """"fit" or "eval" by a stable hash of the trace's id, so a calibration fits on one half of the
    questions and is judged on the other, the same halves on every machine and in every run."""
    return SPLITS[hashlib.sha256(str(trace_id).encode()).digest()[0] >> 7]


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_trace(trace: Any, where: str) -> dict[str, Any]:
    """A trace as the recorder writes it, or RequestError naming the first bad field."""
    def bad(field: str, why: str) -> RequestError:
        return RequestError(f"{where}: {field}: {why}")

    if not isinstance(trace, dict):
        raise bad("trace", f"expected a JSON object, got {type(trace).__name__}")
    if not isinstance(trace.get("id"), (str, int)) or isinstance(trace.get("id"), bool):
        raise bad("id", f"expected a string or an integer, got {trace.get('id')!r}")
    for key, kinds in (("program", str), ("question", str), ("gold", (str, type(None))),
                       ("correct", (bool, type(None)))):
        if not isinstance(trace.get(key), kinds):
            raise bad(key, f"missing or of the wrong type ({trace.get(key)!r})")
    if not _is_int(trace.get("budget"), 1):
        raise bad("budget", f"expected an integer >= 1, got {trace.get('budget')!r}")
    history = trace.get("history")
    if not isinstance(history, list) or not history:
        raise bad("history", "expected a non-empty list")
    previous = -1
    for i, entry in enumerate(history):
        field = f"history[{i}]"
        if not isinstance(entry, dict):
            raise bad(field, "expected a JSON object")
        steps, cert = entry.get("steps"), entry.get("certaindex")
        if not _is_int(steps, previous + 1):
            raise bad(f"{field}.steps", f"expected an integer above the previous entry's {previous}, got {steps!r}")
        if isinstance(cert, bool) or not isinstance(cert, (int, float)) or not math.isfinite(cert):
            raise bad(f"{field}.certaindex", f"expected a finite number, got {cert!r}")
        if not _is_int(entry.get("tokens_used"), 0):
            raise bad(f"{field}.tokens_used", f"expected an integer >= 0, got {entry.get('tokens_used')!r}")
        if not isinstance(entry.get("answer"), (str, type(None))):
            raise bad(f"{field}.answer", f"expected a string or null, got {entry.get('answer')!r}")
        if not isinstance(entry.get("correct"), (bool, type(None))):
            raise bad(f"{field}.correct", f"expected true, false or null, got {entry.get('correct')!r}")
        previous = entry["steps"]
    samples = trace.get("samples", [])
    if not isinstance(samples, list):
        raise bad("samples", "expected a list")
    for i, sample in enumerate(samples):
        field = f"samples[{i}]"
        if not isinstance(sample, dict):
            raise bad(field, "expected a JSON object")
        if not isinstance(sample.get("answer"), (str, type(None))):
            raise bad(f"{field}.answer", f"expected a string or null, got {sample.get('answer')!r}")
        if not _is_int(sample.get("tokens"), 0):
            raise bad(f"{field}.tokens", f"expected an integer >= 0, got {sample.get('tokens')!r}")
        if not isinstance(sample.get("correct"), (bool, type(None))):
            raise bad(f"{field}.correct", f"expected true, false or null, got {sample.get('correct')!r}")
    return trace


def load_traces(path: str | Path) -> list[dict[str, Any]]:
    """The traces of a JSONL file, each checked (blank lines skipped), or RequestError naming the
    file, line and field."""
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
        traces.append(check_trace(trace, f"{path}:{number}"))
    return traces


@functools.lru_cache(maxsize=4096)
def _graded(source: str | None, tests: str, entry: str) -> bool:
    return passes_tests(source, tests, entry)


def grade(rec: Mapping[str, Any], source: str | None) -> bool:
    """A code record's program against its hidden tests ("tests", "entry_point"), each source once."""
    return _graded(source, rec["tests"], rec["entry_point"])


def _note(history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Keep one history entry per knob count: a step that spends no knob unit (a reward score in
    a tree search) updates the entry of the count it belongs to."""
    if history and history[-1]["steps"] >= entry["steps"]:
        history[-1] = entry
    else:
        history.append(entry)


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    """The traces of a JSONL file as they are, unchecked (missing file: none): where an
    interrupted recording resumes."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def record(engine: Any, program: str, records: Iterable[Mapping[str, Any]], options: dict[str, Any],
                 output: str | Path, concurrency: int = 8) -> int:
    """Append one trace per record ({'id', 'question', 'gold'}; code records add 'tests' and
    'entry_point', which grade each sample's program) to `output` as each program ends;
    records whose id is already there are skipped, so an interrupted recording resumes. A program
    the engine failed is not written, and the run then raises. Returns how many were written."""
    output = Path(output)
    done = {t["id"] for t in read_traces(output)}
    todo = [r for r in records if r["id"] not in done]
    runner = ProgramRunner(engine, Scheduler(max_running=concurrency), progress_interval_s=None)
    bar = tqdm(total=len(todo), desc=f"record {program}", unit="prog")
    answer_format = str(options.get("answer_format", "auto"))
    failed: list[str] = []

    async def one(rec: Mapping[str, Any], sink: Any) -> None:
        gold = rec.get("gold")
        history: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        rewards: list[list[float]] = []
        prog = create(program, rec["question"], options)
        if not isinstance(prog, PolicyProgram):
            raise TypeError(f"{program}: only programs with an allocation policy can be recorded")
        grading: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []  # code samples, graded off the loop

        def took(result: StepResult) -> None:
            if isinstance(prog, CodeConsistency):  # it voted by behaviour; the hidden tests grade the source
                n = len(result.samples)
                for answer, source, s in zip(prog.answers[-n:], prog.sources[-n:], result.samples):
                    sample = {"answer": answer, "tokens": s.num_tokens, "finish_reason": s.finish_reason, "correct": None}
                    samples.append(sample)
                    grading.append((sample, loop.run_in_executor(None, grade, rec, source)))
                return
            for s in result.samples:
                answer = sample_answer(s.text, s.finish_reason, answer_format)
                samples.append({"answer": answer, "tokens": s.num_tokens, "finish_reason": s.finish_reason,
                                "correct": is_right(answer, gold)})
            if result.scores:
                rewards.append([round(x, 4) for x in result.scores])

        loop = asyncio.get_running_loop()
        prog.allocate(UniformPolicy())  # never stops early: the trace sees every step
        final = await runner.run(f"trace-{rec['id']}", prog, on_progress=lambda s: _note(history, _history_entry(s, gold)),
                                 on_result=took)
        bar.update(1)
        if final.stop_reason is StopReason.ERROR:  # not a trace of the program: left for a resumed run
            failed.append(f"{rec['id']}: {final.extra.get('error', 'engine error')}")
            return
        correct = is_right(final.answer, gold)
        if isinstance(prog, CodeConsistency):
            for sample, verdict in grading:
                sample["correct"] = await verdict
            for entry in history:
                entry["correct"] = await loop.run_in_executor(None, grade, rec, entry["answer"])
            correct = await loop.run_in_executor(None, grade, rec, final.answer)
        trace = {"format": TRACE_FORMAT, "id": rec["id"], "program": program, "question": rec["question"], "gold": gold,
                 "level": rec.get("level"),
                 "budget": prog.budget, "options": options, "stop_reason": final.stop_reason,
                 "correct": correct, "samples": samples, "rewards": rewards, "history": history}
        sink.write(json.dumps(trace) + "\n")
        sink.flush()

    try:
        with output.open("a") as sink:
            await asyncio.gather(*(one(r, sink) for r in todo))
    finally:
        bar.close()
    if failed:
        raise RuntimeError(f"{len(failed)} programs failed and were not written (run again to resume): {failed[0]}")
    return len(todo)
