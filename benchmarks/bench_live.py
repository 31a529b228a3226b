"""Benchmark: the live server against trace replay, and the server's default allocation on
problems it was not fitted on.

1. Self-consistency with the server's default allocation (config.pbtxt `default_allocation`, a
   shipped calibration) on held-out GSM8K questions (the eval split of the committed traces),
   through `dynasor` on the real server; the same policy replayed on the same questions' traces
   under 10 sample orderings. The live tokens and accuracy should fall within the replay's spread.
2. The default allocation against the uniform budget (what users run today: every program to
   its cap), live and side by side, on grade-school problems generated from a seed: a data set
   the calibration never saw.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
from tqdm import tqdm

from client.dynasor_client import DynasorClient
from engines.engine_settings import cpu_model
from scheduler_backend.allocation import AllocationPolicy, load_policy
from scheduler_backend.answers import answers_equal
from scheduler_backend.datasets import load
from scheduler_backend.replay import build_table, per_ordering, replay
from scheduler_backend.traces import load_traces, split_of
from serving.launcher import MODEL_REPOSITORY, start_server
from serving.model_config import dynasor_parameter

UNIFORM = {"allocation": {"kind": "uniform"}}


def default_policy() -> tuple[str, AllocationPolicy]:
    spec = dynasor_parameter("default_allocation")
    name, _, entry = spec.partition(":")
    path = MODEL_REPOSITORY / "dynasor" / "1" / dynasor_parameter("calibration_dir") / f"{name}.json"
    return spec, load_policy(path, entry or "policy")


def solve_all(url: str, questions: Sequence[tuple[str, str]], options: dict[str, Any], concurrency: int,
              desc: str) -> list[tuple[int, bool]]:
    """(tokens used, right) per question, in order; programs run `concurrency` at a time."""
    client = DynasorClient(url)
    out: list[tuple[int, bool]] = [(0, False)] * len(questions)
    with ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(client.solve, q, "self-consistency", options): i for i, (q, _) in enumerate(questions)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="prog"):
            i = futures[future]
            result = future.result()
            out[i] = (result.tokens_used, result.answer is not None and answers_equal(result.answer, questions[i][1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--traces", default="data/traces/gsm8k-test-sc16.jsonl")
    ap.add_argument("--questions", type=int, default=50, help="held-out GSM8K questions run live")
    ap.add_argument("--transfer", type=int, default=32, help="grade-school problems run under both allocations (0: skip)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    spec, policy = default_policy()
    traces = [t for t in load_traces(args.traces) if split_of(t["id"]) == "eval"][:args.questions]
    print(f"hardware: {cpu_model()}\ndefault allocation: {spec} = {policy}", flush=True)

    table = build_table(traces, round_size=4)  # the server's rounds: detect_step first, then round_size 4
    replayed = replay(table, policy)
    tokens_o = per_ordering(table, replayed.tokens)
    right_o = per_ordering(table, replayed.correct)

    srv = start_server(policy_model=args.model)
    try:
        srv.wait_ready(timeout_s=900)
        live = solve_all(srv.grpc_url, [(t["question"], t["gold"]) for t in traces], {}, args.concurrency, "held-out GSM8K, live")
        problems = load("grade-school", "test", args.transfer)
        pairs = [(p.question, p.gold or "") for p in problems]
        calibrated = solve_all(srv.grpc_url, pairs, {}, args.concurrency, "grade-school, default allocation")
        uniform = solve_all(srv.grpc_url, pairs, UNIFORM, args.concurrency, "grade-school, uniform budget")
    finally:
        srv.stop()

    live_tokens = float(np.mean([t for t, _ in live]))
    live_right = float(np.mean([r for _, r in live]))
    print(f"\n1. {len(traces)} held-out GSM8K questions (eval split), self-consistency, {spec}; {cpu_model()}")
    print(f"{'':<10}{'tokens/question':>18}{'accuracy':>12}")
    print(f"{'replay':<10}{tokens_o.mean():>10.0f} ± {tokens_o.std():<5.0f}{right_o.mean():>10.3f} ± {right_o.std():.3f}"
          f"   (10 sample orderings; range {tokens_o.min():.0f}-{tokens_o.max():.0f} tokens, {right_o.min():.3f}-{right_o.max():.3f})")
    print(f"{'live':<10}{live_tokens:>10.0f}{'':>8}{live_right:>10.3f}")
    inside = tokens_o.min() <= live_tokens <= tokens_o.max() and right_o.min() <= live_right <= right_o.max()
    print(f"live within the replay's range over orderings: {'yes' if inside else 'no'}")

    if not problems:
        return 0
    spent = sum(t for t, _ in calibrated) / max(sum(t for t, _ in uniform), 1)
    lost = sum(u and not c for (_, c), (_, u) in zip(calibrated, uniform))
    gained = sum(c and not u for (_, c), (_, u) in zip(calibrated, uniform))
    print(f"\n2. {len(problems)} grade-school problems (seeded generator; the calibration never saw them)")
    print(f"uniform budget:     {np.mean([t for t, _ in uniform]):>7.0f} tokens/question, accuracy {np.mean([r for _, r in uniform]):.3f}")
    print(f"default allocation: {np.mean([t for t, _ in calibrated]):>7.0f} tokens/question, accuracy {np.mean([r for _, r in calibrated]):.3f}")
    print(f"tokens: {spent:.2f}x uniform; questions lost {lost}, gained {gained} (of {len(problems)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
