"""Benchmark: the `dynasor` model's inter-program scheduler, approximate shortest-job-first
("sjf") against first-come-first-served ("fcfs"), on the same arrivals of mixed-size
self-consistency programs, one server per policy, in one run. Prints mean and p90 program
latency, latency relative to the program's own size (finish-time fairness) and the share of
programs that met a deadline proportional to their size.

Programs run to their budget (settle threshold 1.0 and a high temperature), so a program's size
is its budget; few programs may run at once, so the queue is where the policies differ.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time

from client.dynasor_client import DynasorClient
from serving.launcher import start_server

QUESTION = "A farmer has {n} cows and buys {m} more, then sells half. How many cows are left?"


def workload(programs: int, seed: int) -> list[tuple[float, int]]:
    """(arrival offset s, budget) pairs: exponential gaps, a mix of short and long programs."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(programs):
        out.append((t, rng.choice([2, 2, 4, 12])))
        t += rng.expovariate(1.0)
    return out


def run(policy: str, model: str, arrivals: list[tuple[float, int]], max_running: int, max_tokens: int) -> list[tuple[int, float]]:
    srv = start_server(policy_model=model, engine_overrides={"enforce_eager": True},
                       dynasor_parameters={"scheduling_policy": policy, "max_running_programs": str(max_running)})
    try:
        srv.wait_ready(600)
        client = DynasorClient(srv.grpc_url)
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def one(i: int, budget: int) -> None:
            t0 = time.monotonic()
            client.solve(QUESTION.format(n=10 + i, m=4 + i), "self-consistency",
                         {"budget": budget, "round_size": 2, "detect_step": 2, "settle_threshold": 1.0,
                          "temperature": 1.2, "max_tokens": max_tokens, "progress": False})
            with lock:
                results.append((budget, time.monotonic() - t0))

        client.solve("warm up", "self-consistency", {"budget": 2, "round_size": 2, "max_tokens": 8})
        threads, start = [], time.monotonic()
        for i, (offset, budget) in enumerate(arrivals):
            time.sleep(max(0.0, start + offset - time.monotonic()))
            threads.append(threading.Thread(target=one, args=(i, budget)))
            threads[-1].start()
        for t in threads:
            t.join()
        return results
    finally:
        srv.stop()


def summary(results: list[tuple[int, float]], seconds_per_sample: float) -> dict[str, float]:
    latencies = sorted(lat for _, lat in results)
    slowdown = [lat / (budget * seconds_per_sample) for budget, lat in results]
    return {
        "mean lat s": statistics.mean(latencies),
        "p90 lat s": latencies[int(0.9 * (len(latencies) - 1))],
        "short mean s": statistics.mean(lat for b, lat in results if b <= 2),
        "long mean s": statistics.mean(lat for b, lat in results if b >= 12),
        "max slowdown": max(slowdown),
        "SLO met": sum(s <= 4.0 for s in slowdown) / len(slowdown),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="latency only: the small model keeps the run short")
    ap.add_argument("--programs", type=int, default=16)
    ap.add_argument("--max-running", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    arrivals = workload(args.programs, args.seed)
    runs = {policy: run(policy, args.model, arrivals, args.max_running, args.max_tokens) for policy in ("fcfs", "sjf")}
    # One sample's time alone, from the fastest short program of both runs: the SLO's unit.
    per_sample = min(lat / b for results in runs.values() for b, lat in results)
    rows = {policy: summary(results, per_sample) for policy, results in runs.items()}
    print(f"\n{args.programs} self-consistency programs (budgets 2/4/12 samples, rounds of 2, {args.max_tokens} tokens), "
          f"Poisson arrivals 1/s, {args.max_running} running at once, {args.model}; SLO = 4x the program's size "
          f"at {per_sample:.2f} s per sample")
    print(f"{'':<16}" + "".join(f"{k:>14}" for k in rows["fcfs"]))
    for policy, row in rows.items():
        print(f"{policy:<16}" + "".join(f"{v:>14.2f}" for v in row.values()))
    print(f"{'ratio sjf/fcfs':<16}" + "".join(f"{rows['sjf'][k] / rows['fcfs'][k] if rows['fcfs'][k] else float('nan'):>14.3f}" for k in rows["fcfs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
