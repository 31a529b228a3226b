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
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scheduler_backend.allocation import Verdict
from scheduler_backend.answers import answers_equal
from scheduler_backend.program import ProgramState, StepResult, StopReason
from scheduler_backend.programs.base import PolicyProgram, sample_answer
from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler

TRACE_FORMAT = "dynasor-trace/2"


class RunToCap:
    """An allocation policy that never stops a program early: the trace sees every step."""

    def verdict(self, certaindex: float, steps: int, budget: int) -> Verdict:
        return Verdict.CONTINUE

    def predicted_remaining(self, certaindex: float, steps: int, budget: int) -> float:
        return float(max(budget - steps, 0))


def is_right(answer: str | None, gold: str | None) -> bool | None:
    """Correctness against gold; None when there is no gold to judge by."""
    if gold is None:
        return None
    return answer is not None and answers_equal(answer, gold)


def _history_entry(state: ProgramState, gold: str | None) -> dict[str, Any]:
    return {"steps": state.steps, "certaindex": state.certaindex, "answer": state.answer,
            "tokens_used": state.tokens_used, "correct": is_right(state.answer, gold)}


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    """The traces of a JSONL file (missing file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def record(engine: Any, program: str, records: Iterable[Mapping[str, Any]], options: dict[str, Any],
                 output: str | Path, concurrency: int = 8) -> int:
    """Append one trace per record ({'id', 'question', 'gold'}) to `output` as each program ends;
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

        def took(result: StepResult) -> None:
            for s in result.samples:
                answer = sample_answer(s.text, s.finish_reason, answer_format)
                samples.append({"answer": answer, "tokens": s.num_tokens, "finish_reason": s.finish_reason,
                                "correct": is_right(answer, gold)})
            if result.scores:
                rewards.append([round(x, 4) for x in result.scores])

        prog = create(program, rec["question"], options)
        if not isinstance(prog, PolicyProgram):
            raise TypeError(f"{program}: only programs with an allocation policy can be recorded")
        prog.policy = RunToCap()
        final = await runner.run(f"trace-{rec['id']}", prog, on_progress=lambda s: history.append(_history_entry(s, gold)),
                                 on_result=took)
        bar.update(1)
        if final.stop_reason is StopReason.ERROR:  # not a trace of the program: left for a resumed run
            failed.append(f"{rec['id']}: {final.extra.get('error', 'engine error')}")
            return
        trace = {"format": TRACE_FORMAT, "id": rec["id"], "program": program, "question": rec["question"], "gold": gold,
                 "level": rec.get("level"),
                 "budget": prog.budget, "options": options, "stop_reason": final.stop_reason,
                 "correct": is_right(final.answer, gold), "samples": samples, "rewards": rewards, "history": history}
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
