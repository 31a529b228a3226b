"""Benchmark: self-consistency programs through the in-server `dynasor` model next to the same
programs driven client-side over `policy` (how users run them today), on one server, one model
and the same GSM8K questions, in one run. Prints output tokens/s, program latency, samples used
and accuracy for each, and the ratios.

The client-side run goes first, so whatever the prefix cache keeps from it helps the baseline,
not `dynasor`. Both run all programs at once; the client side with no cross-program scheduling.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from client.dynasor_client import DynasorClient
from engines.triton_grpc import GrpcPolicyEngine
from scheduler_backend.answers import answers_equal
from scheduler_backend.datasets import load
from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler, SchedulingPolicy
from serving.launcher import start_server


def client_side(url: str, questions: list[str], options: dict) -> tuple[list[dict], float]:
    async def run_all():
        engine = GrpcPolicyEngine(url)
        runner = ProgramRunner(engine, Scheduler(max_running=len(questions), policy=SchedulingPolicy.FCFS))
        try:
            states = await asyncio.gather(*(runner.run(f"client-{i}", create("self-consistency", q, options))
                                            for i, q in enumerate(questions)))
        finally:
            engine.shutdown()
        return [{"answer": s.answer, "tokens": s.tokens_used, "steps": s.steps, "latency_s": s.extra["latency_s"]} for s in states]

    t0 = time.perf_counter()
    rows = asyncio.run(run_all())
    return rows, time.perf_counter() - t0


def in_server(url: str, questions: list[str], options: dict) -> tuple[list[dict], float]:
    client = DynasorClient(url)

    def one(q: str) -> dict:
        p = client.solve(q, "self-consistency", options)
        return {"answer": p.answer, "tokens": p.tokens_used, "steps": p.steps, "latency_s": p.latency_s}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(questions)) as pool:
        rows = list(pool.map(one, questions))
    return rows, time.perf_counter() - t0


def summary(rows: list[dict], wall: float, golds: list[str | None]) -> dict:
    latencies = sorted(r["latency_s"] for r in rows)
    return {
        "tok/s": sum(r["tokens"] for r in rows) / wall,
        "wall s": wall,
        "mean lat s": statistics.mean(latencies),
        "p90 lat s": latencies[int(0.9 * (len(latencies) - 1))],
        "samples": sum(r["steps"] for r in rows),
        "accuracy": sum(answers_equal(r["answer"], g) for r, g in zip(rows, golds)) / len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--round-size", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    problems = load("gsm8k", limit=args.questions)
    questions = [p.question for p in problems]
    golds = [p.gold for p in problems]
    options = {"budget": args.budget, "round_size": args.round_size, "settle_threshold": args.threshold, "max_tokens": args.max_tokens}

    srv = start_server(policy_model=args.model)
    try:
        srv.wait_ready(600)
        DynasorClient(srv.grpc_url).solve("What is 2 + 2?", "self-consistency", {"budget": 2, "round_size": 2, "max_tokens": 16})
        base = summary(*client_side(srv.grpc_url, questions, options), golds)
        ours = summary(*in_server(srv.grpc_url, questions, options), golds)
    finally:
        srv.stop()
    print(f"\n{args.questions} self-consistency programs on {args.model} (budget {args.budget}, rounds of {args.round_size}, "
          f"threshold {args.threshold}, {args.max_tokens} tokens per sample), all at once")
    print(f"{'':<24}" + "".join(f"{k:>12}" for k in base))
    for name, row in (("client-side over policy", base), ("dynasor (in-server)", ours)):
        print(f"{name:<24}" + "".join(f"{v:>12.2f}" for v in row.values()))
    print(f"{'ratio dynasor/client':<24}" + "".join(f"{ours[k] / base[k] if base[k] else float('nan'):>12.3f}" for k in base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
