"""`make demo`: start the server on the model that can reason, run self-consistency programs on a
mix of easy and hard GSM8K questions at once through the `dynasor` model, and show what
Dynasor does with them: from the first seconds, tokens generated per program and answers as rounds
finish; at the end, easy questions settled after a few samples while split ones spent more.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from client.dynasor_client import DynasorClient, ProgramError, Progress
from scheduler_backend.datasets import Problem, is_correct, load
from serving.launcher import start_server

# GSM8K test questions picked from `make bench-accuracy` (8 samples each): on the first three the
# model's samples mostly agreed (6-7 of 8 alike), on the last three they split (3-4 of 8 alike).
# Certaindex tells them apart while the programs run: the first settle after one round, the
# others spend more samples.
AGREED = (1, 22, 48)
SPLIT = (3, 6, 10)


def demo_problems(count: int) -> list[Problem]:
    gsm8k = load("gsm8k", limit=max(AGREED + SPLIT) + 1)
    mixed = [gsm8k[i] for pair in zip(AGREED, SPLIT) for i in pair]
    return mixed[:count]


class Ticker:
    """One line per program at most every `every_s` seconds, and one on every finished round."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.lock, self.t0 = every_s, threading.Lock(), time.monotonic()
        self.last: dict[int, float] = {}
        self.steps: dict[int, int] = {}

    def __call__(self, i: int, p: Progress) -> None:
        now = time.monotonic()
        new_round = p.steps != self.steps.get(i, 0)
        if p.final or not (new_round or now - self.last.get(i, -1e9) >= self.every_s):
            return
        self.last[i], self.steps[i] = now, p.steps
        tokens = p.tokens_used + int(p.details.get("tokens_in_flight", 0))
        what = (f"answer={p.answer!s:<8} certaindex={p.certaindex:.2f} samples={p.steps}/{p.budget}"
                if p.steps else "generating the first round")
        with self.lock:
            print(f"  {now - self.t0:6.1f}s  q{i + 1}  tokens={tokens:<6} {what}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--budget", type=int, default=16)
    args = ap.parse_args(argv)
    problems = demo_problems(args.questions)

    t_start = time.monotonic()
    srv = start_server(policy_model=args.model)
    try:
        print(f"demo: policy engine settings: {srv.engine_settings}", flush=True)
        print(f"demo: starting tritonserver with {args.model} (about a minute; log {srv.log_path})", flush=True)
        srv.wait_ready(timeout_s=600)
        print(f"demo: server ready after {time.monotonic() - t_start:.0f} s; {len(problems)} programs at once, "
              f"self-consistency, up to {args.budget} samples each, rounds of 4", flush=True)
        for i, p in enumerate(problems):
            print(f"  q{i + 1}  [{p.dataset}] {p.question[:100]}{'...' if len(p.question) > 100 else ''}")
        client = DynasorClient(srv.grpc_url)
        options = {"budget": args.budget, "round_size": 4, "settle_threshold": 0.7}
        ticker = Ticker()

        def one(i: int) -> tuple[int, Progress | str]:
            try:
                return i, client.solve(problems[i].question, "self-consistency", options,
                                       on_progress=lambda p: ticker(i, p))
            except ProgramError as e:
                return i, str(e)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(problems)) as pool:
            results = dict(pool.map(one, range(len(problems))))
        wall = time.monotonic() - t0
        print(f"\n{'#':<4}{'set':<14}{'answer':>8}{'gold':>8}{'ok':>4}{'certaindex':>11}{'samples':>9}"
              f"{'stopped':>9}{'tokens':>8}{'seconds':>9}")
        for i, problem in enumerate(problems):
            r = results[i]
            if isinstance(r, str):
                print(f"q{i + 1:<3}error: {r}")
                continue
            ok = "yes" if is_correct(problem, r.answer) else "no"
            print(f"q{i + 1:<3}{problem.dataset:<14}{r.answer!s:>8}{problem.gold!s:>8}{ok:>4}{r.certaindex:>11.2f}"
                  f"{f'{r.steps}/{r.budget}':>9}{r.stop_reason:>9}{r.tokens_used:>8}{r.latency_s or 0:>9.0f}")
        done = [r for r in results.values() if not isinstance(r, str)]
        used = sum(r.steps for r in done)
        print(f"\n{len(problems)} programs in {wall:.0f} s ({time.monotonic() - t_start:.0f} s with the server start). "
              f"Samples used: {used} of {args.budget * len(done)} allowed: settled questions stopped early, "
              "split ones spent more.")
        return 0
    finally:
        print("demo: stopping the server", flush=True)
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
