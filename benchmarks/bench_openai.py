"""Benchmark: the cost of the OpenAI-compatible front, on one server, both paths in the same run.
1. throughput: the same self-consistency load (programs of a fixed size: no early stop, samples of
   a fixed length) straight through gRPC (the asyncio tritonclient stream the front itself uses)
   and through the front with the `openai` client, alternating, several rounds each: tokens/s;
2. added latency: tiny programs (one sample of one token) one at a time, alternating direct and
   front, so the engine's time is small and alike: the difference of the p50 latencies is what
   the front adds.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import openai

from client.dynasor_client import AsyncDynasorClient
from engines.engine_settings import cpu_model
from scheduler_backend.datasets import load
from serving.launcher import start_openai_front, start_server


async def _direct(url: str, question: str, options: dict[str, Any]) -> tuple[int, float]:
    t0 = time.perf_counter()
    p = await AsyncDynasorClient(url).solve(question, "self-consistency", options)
    return p.tokens_used, time.perf_counter() - t0


async def _front(url: str, question: str, options: dict[str, Any]) -> tuple[int, float]:
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=900)  # one per event loop
    t0 = time.perf_counter()
    r = await client.chat.completions.create(model="dynasor/self-consistency", messages=[{"role": "user", "content": question}],
                                             extra_body={"dynasor": options})
    elapsed = time.perf_counter() - t0
    await client.close()
    assert r.usage is not None, "the front sends usage"
    return r.usage.completion_tokens, elapsed


async def _round(call: Any, questions: list[str], concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(q: str) -> tuple[int, float]:
        async with gate:
            return await call(q)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(q) for q in questions))
    wall = time.perf_counter() - t0
    return {"tokens_per_s": sum(t for t, _ in results) / wall, "p50_s": statistics.median(s for _, s in results)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--programs", type=int, default=16, help="programs per round")
    ap.add_argument("--concurrency", type=int, default=8, help="programs in flight")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path, alternating")
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--latency-programs", type=int, default=40, help="tiny programs per path for the added latency")
    args = ap.parse_args(argv)
    options = {"budget": args.budget, "round_size": args.budget, "max_tokens": args.max_tokens, "min_tokens": args.max_tokens,
               "settle_threshold": 1.0, "detect_step": args.budget}
    questions = [p.question for p in load("gsm8k", "test", args.programs)]
    srv = start_server(policy_model=args.model)
    front = None
    try:
        srv.wait_ready(timeout_s=900)
        front = start_openai_front(srv.grpc_url, log_dir=srv.run_dir)
        front.wait_ready()
        paths = {"direct": lambda q: _direct(srv.grpc_url, q, options), "front": lambda q: _front(front.url, q, options)}
        asyncio.run(_round(paths["direct"], questions[:2], 2))  # warm up
        rows: dict[str, list[dict[str, float]]] = {"direct": [], "front": []}
        for i in range(args.rounds):
            for name in ("direct", "front") if i % 2 == 0 else ("front", "direct"):
                rows[name].append(asyncio.run(_round(paths[name], questions, args.concurrency)))
                print(f"round {i + 1} {name}: {rows[name][-1]['tokens_per_s']:.1f} tok/s, p50 {rows[name][-1]['p50_s']:.3f} s", flush=True)
        tiny = {"budget": 1, "round_size": 1, "detect_step": 1, "max_tokens": 1}
        latency: dict[str, list[float]] = {"direct": [], "front": []}
        for i in range(args.latency_programs):
            for name in ("direct", "front") if i % 2 == 0 else ("front", "direct"):
                call = _direct(srv.grpc_url, questions[0], tiny) if name == "direct" else _front(front.url, questions[0], tiny)
                latency[name].append(asyncio.run(call)[1])
    finally:
        if front is not None:
            front.stop()
        srv.stop()
    mean = {k: {m: statistics.fmean(r[m] for r in v) for m in ("tokens_per_s", "p50_s")} for k, v in rows.items()}
    print(f"\n{cpu_model()}; {args.programs} programs x {args.budget} samples of {args.max_tokens} tokens, {args.concurrency} in flight, "
          f"{args.rounds} rounds per path")
    print("| path | tokens/s | p50 latency s |\n|---|---:|---:|")
    for name in ("direct", "front"):
        print(f"| {name} | {mean[name]['tokens_per_s']:.1f} | {mean[name]['p50_s']:.3f} |")
    ratio = mean["front"]["tokens_per_s"] / mean["direct"]["tokens_per_s"]
    p50 = {k: statistics.median(v) for k, v in latency.items()}
    added_ms = (p50["front"] - p50["direct"]) * 1e3
    print(f"front/direct tokens/s {ratio:.3f} (target >= 0.95)")
    print(f"tiny programs one at a time ({args.latency_programs} each): p50 direct {p50['direct'] * 1e3:.1f} ms, front "
          f"{p50['front'] * 1e3:.1f} ms: the front adds {added_ms:+.1f} ms (target <= 20 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
