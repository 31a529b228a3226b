"""Benchmark: the `policy` model's output tokens/s through Triton next to vLLM's own
`LLM.generate` on the same prompts, engine arguments and machine, in one run.

Each concurrency level sends C prompts at once (one sample each, fixed length: ignore_eos), so both
paths decode the same number of tokens; the ratio Triton/direct is what matters on a noisy host.
Only one engine lives at a time (the machine has 2 cores): Triton first, then the direct engine in
a child process.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from engines.grpc_stream import StreamCall
from serving.launcher import MODEL_REPOSITORY, resolve_model, start_server

TOPICS = ["apples", "trains", "rivers", "stars", "bread", "clocks", "bees", "ships"]


def prompts(count: int) -> list[str]:
    return [f"Write a short story number {i} about {TOPICS[i % len(TOPICS)]}." for i in range(count)]


def engine_args(model: str) -> dict:
    cfg = json.loads((MODEL_REPOSITORY / "policy" / "1" / "model.json").read_text())
    cfg["model"] = resolve_model(model)
    return cfg


def triton_run(model: str, levels: list[int], max_tokens: int) -> dict[int, float]:
    srv = start_server(policy_model=model, extra_args=["--model-control-mode=explicit", "--load-model=policy"])
    try:
        srv.wait_ready(600)
        sampling = json.dumps({"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7})

        def one(prompt: str) -> int:
            responses = StreamCall(srv.grpc_url, "policy", {"text_input": prompt, "sampling_parameters": sampling}).collect()
            return sum(int(r.outputs["num_output_tokens"].sum()) for r in responses if "num_output_tokens" in r.outputs)

        one("warm up")
        out = {}
        for c in levels:
            with ThreadPoolExecutor(max_workers=c) as pool:
                t0 = time.perf_counter()
                tokens = sum(tqdm(pool.map(one, prompts(c)), total=c, desc=f"triton c={c}", leave=False))
                out[c] = tokens / (time.perf_counter() - t0)
        return out
    finally:
        srv.stop()


def direct_run(model: str, levels: list[int], max_tokens: int) -> dict[int, float]:
    """vLLM's offline `LLM.generate` in a child process (spawned engines need a __main__ guard)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_policy", "--direct-child", json.dumps({"model": model, "levels": levels, "max_tokens": max_tokens})]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return {int(k): v for k, v in json.loads(line[len("RESULT "):]).items()}


def _direct_child(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    args = engine_args(spec["model"])
    args.pop("disable_log_stats", None)
    llm = LLM(**args)
    params = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True, temperature=0.7)
    llm.generate(["warm up"], params, use_tqdm=False)
    out = {}
    for c in spec["levels"]:
        t0 = time.perf_counter()
        results = llm.generate(prompts(c), params, use_tqdm=False)
        out[c] = sum(len(o.token_ids) for r in results for o in r.outputs) / (time.perf_counter() - t0)
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--levels", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.direct_child:
        _direct_child(json.loads(args.direct_child))
        return 0
    rows = []
    for model in args.models:
        tri = triton_run(model, args.levels, args.max_tokens)
        direct = direct_run(model, args.levels, args.max_tokens)
        rows += [(model, c, tri[c], direct[c]) for c in args.levels]
    print(f"\n{'model':<22}{'concurrent':>11}{'triton tok/s':>14}{'direct tok/s':>14}{'ratio':>8}")
    for model, c, t, d in rows:
        print(f"{model:<22}{c:>11}{t:>14.1f}{d:>14.1f}{t / d:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
