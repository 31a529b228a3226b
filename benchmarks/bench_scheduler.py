"""Micro-benchmark: the cost of one scheduling decision with 1, 100 and 10,000 live programs.

Two operations are timed, each followed by the `schedule` call that acts on it: an `update` of a
random live program's predicted work, and a churn (`remove` a random running program, as when it
finishes, and `add` a new one; the `schedule` then admits a waiting program from the queue). The
scheduler runs once per step result in the server, so the target is well under 1 ms per decision
even with 10,000 live programs. Run: `python -m benchmarks.bench_scheduler`.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time

from scheduler_backend.scheduler import Scheduler

SIZES = (1, 100, 10_000)


def _stats(samples_ns: list[int]) -> tuple[float, float, float]:
    """Mean, p99 and max in microseconds (max shows the occasional heap rebuild)."""
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return sum(ordered) / len(ordered) / 1e3, p99 / 1e3, ordered[-1] / 1e3


def bench(live: int, ops: int, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Time `ops` update+schedule and `ops` remove+add+schedule decisions with `live` programs."""
    rng = random.Random(seed)
    sched = Scheduler(max_running=16)
    now = 0.0
    pids = [f"p{i}" for i in range(live)]
    for pid in pids:
        now += 0.001
        sched.add(pid, now, rng.uniform(100, 20_000), deadline=now + rng.uniform(5, 600) if rng.random() < 0.3 else None)
    running = list(sched.schedule(now).admit)
    clock = time.perf_counter_ns
    update_ns, churn_ns = [], []
    next_id = live
    for _ in range(ops):
        now += 0.001
        pid = pids[rng.randrange(live)]
        work = rng.uniform(0, 20_000)
        t0 = clock()
        sched.update(pid, work)
        sched.schedule(now)
        update_ns.append(clock() - t0)

        old, new = running.pop(rng.randrange(len(running))), f"p{next_id}"
        next_id += 1
        pids[pids.index(old)] = new
        work = rng.uniform(100, 20_000)
        t0 = clock()
        sched.remove(old)
        sched.add(new, now, work)
        decisions = sched.schedule(now)
        churn_ns.append(clock() - t0)
        running.extend(decisions.admit)
    assert len(sched) == live
    return {"update+schedule": _stats(update_ns), "remove+add+schedule": _stats(churn_ns)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="decisions timed per size and operation")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, max_running=16")
    print(f"{'live programs':>14} {'operation':>22} {'mean us':>9} {'p99 us':>9} {'max us':>9}")
    for live in SIZES:
        for name, (mean, p99, worst) in bench(live, args.ops).items():
            print(f"{live:>14,} {name:>22} {mean:>9.1f} {p99:>9.1f} {worst:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
