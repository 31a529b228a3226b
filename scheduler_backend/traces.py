"""Certaindex traces: programs run to their cap on any engine and each one's certaindex/answer
history kept, the input `dynasor calibrate` fits allocation policies from (`dynasor record`,
client/record.py, runs it on the direct vLLM engine). Programs run with a policy that never stops
early, so a replay can stop them anywhere."""
from __future__ import annotations

import asyncio
from typing import Any

from tqdm import tqdm

from scheduler_backend.allocation import Verdict
from scheduler_backend.answers import answers_equal
from scheduler_backend.program import ProgramState
from scheduler_backend.programs.base import PolicyProgram
from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler


class RunToCap:
    """An allocation policy that never stops a program early: the trace sees every step."""

    def verdict(self, certaindex: float, steps: int, budget: int) -> Verdict:
        return Verdict.CONTINUE

    def predicted_remaining(self, certaindex: float, steps: int, budget: int) -> float:
        return float(max(budget - steps, 0))


def history_entry(state: ProgramState) -> dict[str, Any]:
    return {"steps": state.steps, "certaindex": state.certaindex, "answer": state.answer, "tokens_used": state.tokens_used}


async def record(engine: Any, program: str, records: list[dict[str, Any]], options: dict[str, Any],
                 concurrency: int = 8) -> list[dict[str, Any]]:
    """One trace per record ({'question', 'gold'}), programs run `concurrency` at a time."""
    runner = ProgramRunner(engine, Scheduler(max_running=concurrency))
    bar = tqdm(total=len(records), desc=f"record {program}", unit="prog")

    async def one(i: int, rec: dict[str, Any]) -> dict[str, Any]:
        history: list[dict[str, Any]] = []
        prog = create(program, rec["question"], options)
        if not isinstance(prog, PolicyProgram):
            raise TypeError(f"{program}: only programs with an allocation policy can be recorded")
        prog.policy = RunToCap()
        final = await runner.run(f"trace-{i}", prog, on_progress=lambda s: history.append(history_entry(s)))
        bar.update(1)
        gold = rec.get("gold")
        return {"program": program, "question": rec["question"], "gold": gold, "budget": prog.budget,
                "history": history, "correct": None if gold is None else answers_equal(final.answer, gold)}

    try:
        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(records))))
    finally:
        bar.close()
