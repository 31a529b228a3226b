"""`dynasor record DATA.jsonl -o traces.jsonl`: run programs to their cap on the direct vLLM
engine, with the `policy` and `reward` models' own settings, and write their certaindex traces."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from scheduler_backend.datasets import gold_answer, load_records
from scheduler_backend.traces import record
from serving.model_config import judge_settings, policy_engine_args


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, record the traces, write them as JSONL."""
    from engines.vllm_direct import VllmEngine

    ap = argparse.ArgumentParser(prog="dynasor record", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("data", help="JSONL with 'question' (or 'problem') and optionally 'answer'")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="NAME under models/ or a folder")
    ap.add_argument("--program", default="self-consistency")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--options", default="{}", help="JSON program options (budget, round_size, max_tokens, ...)")
    args = ap.parse_args(argv)
    records = [{"question": r.get("question") or r.get("problem"), "gold": gold_answer(r)} for r in load_records(args.data, args.limit)]

    async def go() -> list[dict[str, Any]]:
        async with VllmEngine(policy_engine_args(args.model), judge_settings()) as engine:
            return await record(engine, args.program, records, json.loads(args.options), args.concurrency)

    traces = asyncio.run(go())
    Path(args.output).write_text("".join(json.dumps(t) + "\n" for t in traces))
    print(f"wrote {len(traces)} traces to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
