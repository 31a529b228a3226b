"""`dynasor record DATA.jsonl -o traces.jsonl`: run programs to their cap on the direct vLLM
engine, with the `policy` and `reward` models' own settings, and append their traces
(scheduler_backend/traces.py). Run it again with the same output to resume where it stopped."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from scheduler_backend.datasets import DATASETS, gold_answer, load, load_records
from scheduler_backend.traces import record
from serving.model_config import policy_engine_args, reward_settings


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, record the traces, append them as JSONL."""
    from engines.vllm_direct import VllmEngine

    ap = argparse.ArgumentParser(prog="dynasor record", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("data", help="JSONL with 'question' (or 'problem') and optionally 'answer', or a shipped set as "
                                 f"NAME[:SPLIT] ({', '.join(DATASETS)})")
    ap.add_argument("-o", "--output", required=True, help="JSONL of traces; existing ids in it are skipped")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="NAME under models/ or a folder")
    ap.add_argument("--program", default="self-consistency", help="self-consistency, code, mcts, rebase, cot-probe")
    ap.add_argument("--limit", type=int, default=None, help="first N records only")
    ap.add_argument("--concurrency", type=int, default=8, help="programs run at once")
    ap.add_argument("--options", default="{}", help="JSON program options (budget, round_size, max_tokens, ...)")
    ap.add_argument("--reward", default=None, help="reward settings (a model.json for `reward`, e.g. deploy/reward/*.json; "
                                                   "default: the served one)")
    args = ap.parse_args(argv)
    name, _, split = args.data.partition(":")
    if not Path(args.data).exists() and name in DATASETS:
        records = [{"id": f"{name}-{split or 'test'}-{p.id}", "question": p.question, "gold": p.gold, "level": p.level,
                    **({"tests": p.tests, "entry_point": p.entry_point} if p.tests else {})}
                   for p in load(name, split or "test", args.limit)]
    else:
        path = Path(args.data)
        stem = path.stem if path.parent.name in ("", ".") else f"{path.parent.name}-{path.stem}"
        records = [{"id": f"{stem}-{i}", "question": r.get("question") or r.get("problem"), "gold": gold_answer(r)}
                   for i, r in enumerate(load_records(args.data, args.limit))]

    async def go() -> int:
        async with VllmEngine(policy_engine_args(args.model), reward_settings(args.reward)) as engine:
            return await record(engine, args.program, records, json.loads(args.options), args.output, args.concurrency)

    # SIGTERM unwinds like Ctrl-C, so the engine's processes are shut down with the recorder
    # (killed outright they outlived it, holding the engine's memory).
    signal.signal(signal.SIGTERM, _exit_on_term)
    written = asyncio.run(go())
    print(f"wrote {written} traces to {args.output} ({len(records) - written} were there already)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
