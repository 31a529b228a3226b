"""Benchmark: Dynasor-CoT on chat, tokens saved at equal accuracy. Each GSM8K test question's chain
of thought runs once on the real server (`cot-probe`, chunks of 64 tokens, a probe after each)
with a probe window no chain can fill, so it runs to its natural end (or its cap) and every probe
is recorded; then each effort preset's stopping rule is replayed on that same chain: stop at the
first chunk whose last `window` probes agree and none hedges, answer with that probe. Against it,
the same chain run to its end with no probing at all (its own final answer, its thought's tokens
only): the comparison the paper's Dynasor-CoT makes, on the project's default model.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.dynasor_client import DynasorClient, ProgramError
from engines.engine_settings import cpu_model
from scheduler_backend.answers import answers_equal
from scheduler_backend.datasets import load
from scheduler_backend.programs import EFFORTS
from serving.launcher import start_server

NEVER = 64  # a probe window longer than any chain recorded here: nothing settles, every probe is kept


def stop_point(chain: Mapping[str, Any], window: int) -> tuple[int | None, str | None]:
    """Where an effort preset's rule stops this chain: the chunk index whose probe makes the last
    `window` probes agree with none hedging, and that probe's answer; (None, None) if never."""
    probes, hedges = chain["probes"], chain["hedges"]
    for i in range(window - 1, len(probes)):
        last = probes[i]
        if last is None:
            continue
        span = range(i - window + 1, i + 1)
        if all(not hedges[j] and answers_equal(probes[j], last) for j in span):
            return i, last
    return None, None


def replay(chains: Sequence[Mapping[str, Any]], window: int) -> dict[str, Any]:
    """An effort preset on every recorded chain: tokens (chunks and probes up to its stop, or all of
    them when it never stops), accuracy, how many chains it cut."""
    tokens, right, cut = 0, 0, 0
    for c in chains:
        i, answer = stop_point(c, window)
        if i is None:
            tokens += sum(c["chunk_tokens"]) + sum(c["probe_tokens"])
            answer = c["answer"]
        else:
            cut += 1
            tokens += sum(c["chunk_tokens"][: i + 1]) + sum(c["probe_tokens"][: i + 1])
        right += answers_equal(answer, c["gold"])
    n = len(chains)
    return {"tokens": tokens / n, "accuracy": right / n, "cut": cut / n}


def record(url: str, questions: Sequence[Any], budget: int, chunk_tokens: int, concurrency: int) -> list[dict[str, Any]]:
    client = DynasorClient(url)
    options = {"budget": budget, "chunk_tokens": chunk_tokens, "window": NEVER}

    def one(problem: Any) -> dict[str, Any]:
        p = client.solve(problem.question, "cot-probe", options)
        d = p.details
        return {"id": problem.id, "gold": problem.gold, "answer": p.answer, "stop_reason": p.stop_reason, "tokens_used": p.tokens_used,
                "probes": d["probes"], "hedges": d["hedges"], "chunk_tokens": d["chunk_tokens"], "probe_tokens": d["probe_tokens"],
                "thought_ended": d["thought_ended"]}

    chains = []
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, q) for q in questions]
        for f in tqdm(as_completed(futures), total=len(futures), desc="chains of thought", unit="q"):
            try:
                chains.append(f.result())
            except ProgramError as e:
                print(f"program failed: {e}", file=sys.stderr)
    return sorted(chains, key=lambda c: c["id"])


def table(chains: Sequence[Mapping[str, Any]], chunk_tokens: int) -> list[str]:
    n = len(chains)
    full_tokens = sum(sum(c["chunk_tokens"]) for c in chains) / n
    full_right = sum(answers_equal(c["answer"], c["gold"]) for c in chains) / n
    se = (full_right * (1 - full_right) / n) ** 0.5
    lines = ["| stopping rule | tokens per question | x the full chain | accuracy | chains cut |", "|---|---:|---:|---:|---:|",
             f"| the chain run to its end, no probes | {full_tokens:,.0f} | 1.00 | {full_right:.1%} ± {se:.1%} | - |"]
    for effort, (window, chunk) in EFFORTS.items():
        if chunk != chunk_tokens:
            continue  # recorded in chunks of another size
        r = replay(chains, window)
        lines.append(f"| effort `{effort}` (window {window}) | {r['tokens']:,.0f} | {r['tokens'] / full_tokens:.2f} | "
                     f"{r['accuracy']:.1%} | {r['cut']:.0%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--questions", type=int, default=100, help="the first N GSM8K test questions")
    ap.add_argument("--budget", type=int, default=16, help="most chunks of thought")
    ap.add_argument("--chunk-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", default="runs/cot.json")
    ap.add_argument("--replay-only", action="store_true", help="read --out instead of running the server")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.replay_only:
        data = json.loads(out.read_text())
    else:
        srv = start_server(policy_model=args.model)
        try:
            srv.wait_ready(timeout_s=900)
            chains = record(srv.grpc_url, load("gsm8k", "test", args.questions), args.budget, args.chunk_tokens, args.concurrency)
        finally:
            srv.stop()
        data = {"hardware": cpu_model(), "settings": {k: v for k, v in vars(args).items() if k not in ("out", "replay_only")},
                "chains": chains}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1))
    chains = data["chains"]
    s = data["settings"]
    ended = sum(c["thought_ended"] for c in chains)
    print(f"{data['hardware']}; {len(chains)} GSM8K test questions, chunks of {s['chunk_tokens']} tokens, at most {s['budget']} "
          f"({ended} chains ended on their own)\n")
    print("\n".join(table(chains, s["chunk_tokens"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
