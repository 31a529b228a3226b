"""`dynasor record DATA.jsonl -o traces.jsonl`: run programs to their cap on the direct vLLM
engine and write each one's certaindex/answer history, the input `dynasor calibrate` fits
allocation policies from. Programs run with a policy that never stops early, so a replay can
stop them anywhere."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scheduler_backend.allocation import Verdict
from scheduler_backend.program import ProgramState
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
    from scheduler_backend.answers import answers_equal

    runner = ProgramRunner(engine, Scheduler(max_running=concurrency))
    bar = tqdm(total=len(records), desc=f"record {program}", unit="prog")

    async def one(i: int, rec: dict[str, Any]) -> dict[str, Any]:
        history: list[dict[str, Any]] = []
        prog = create(program, rec["question"], options)
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


def main(argv: list[str] | None = None) -> int:
    from client.batch import gold_answer, load_records
    from engines.vllm_direct import VllmEngine

    ap = argparse.ArgumentParser(prog="dynasor record", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="JSONL with 'question' (or 'problem') and optionally 'answer'")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="NAME under models/ or a folder")
    ap.add_argument("--program", default="self-consistency")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--options", default="{}", help="JSON program options (budget, round_size, max_tokens, ...)")
    args = ap.parse_args(argv)
    from serving.launcher import resolve_model

    records = [{"question": r.get("question") or r.get("problem"), "gold": gold_answer(r)} for r in load_records(args.data, args.limit)]

    async def go() -> list[dict[str, Any]]:
        async with VllmEngine(resolve_model(args.model)) as engine:
            return await record(engine, args.program, records, json.loads(args.options), args.concurrency)

    traces = asyncio.run(go())
    Path(args.output).write_text("".join(json.dumps(t) + "\n" for t in traces))
    print(f"wrote {len(traces)} traces to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
