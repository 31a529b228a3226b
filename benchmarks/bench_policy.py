"""Benchmark: the `policy` model's output tokens/s through Triton next to vLLM's own
`LLM.generate` on the same prompts, engine arguments and machine, in one run.

Each concurrency level sends C prompts at once (one sample each, fixed length: ignore_eos), so every
path decodes the same number of tokens; ratios measured in one run are what matter on a noisy host.
`policy` runs with the project's defaults, then eager; the direct engine runs with the settings
`policy` picks for this machine, then with each choice undone (the other dtype, vLLM's default
core reservation, eager instead of torch.compile, the preloaded libraries), so the table shows what
each choice is worth. One engine lives at a time (the machine has 2 cores). The load generator for
Triton is one asyncio gRPC client with every request a stream on it; `--threaded-client` adds the
earlier one (a thread and a channel per request), whose own cost on 2 cores is counted against
Triton.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.dynasor_client import aio_stream
from engines.engine_settings import cpu_model, preload_libraries, settings_for_this_machine
from engines.grpc_stream import StreamCall
from serving.launcher import start_server
from serving.model_config import policy_engine_args

TOPICS = ["apples", "trains", "rivers", "stars", "bread", "clocks", "bees", "ships"]


def prompts(count: int) -> list[str]:
    return [f"Write a short story number {i} about {TOPICS[i % len(TOPICS)]}." for i in range(count)]


async def _aio_level(url: str, texts: list[str], sampling: str) -> int:
    """All prompts at once as streams on one asyncio gRPC client (one channel, one thread): the
    load generator costs the 2 cores little next to one thread and one channel per request."""
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(url)

    async def one(prompt: str) -> int:
        tokens = 0
        inputs = {"text_input": prompt, "sampling_parameters": sampling}
        async with aclosing(aio_stream(url, "policy", inputs, client=client)) as responses:
            async for outputs in responses:
                if "num_output_tokens" in outputs:
                    tokens += int(outputs["num_output_tokens"].sum())
        return tokens

    try:
        return sum(await asyncio.gather(*(one(p) for p in texts)))
    finally:
        await client.close()


def triton_run(model: str, levels: list[int], max_tokens: int, overrides: dict[str, Any] | None = None,
               env: dict[str, str] | None = None, client: str = "asyncio") -> tuple[dict[int, float], float]:
    """`policy` with the project's defaults (or `overrides` over them, `env` set for the server);
    tokens/s per level and seconds from launch to ready. `client`: "asyncio" (one client, every
    request a stream on it) or "threads" (a thread and a gRPC channel per request)."""
    t0 = time.perf_counter()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        srv = start_server(policy_model=model, extra_args=["--model-control-mode=explicit", "--load-model=policy"],
                           engine_overrides=overrides)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        print(f"policy engine settings: {srv.engine_settings}", flush=True)
        srv.wait_ready(600)
        start_s = time.perf_counter() - t0
        sampling = json.dumps({"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7})

        def one(prompt: str) -> int:
            responses = StreamCall(srv.grpc_url, "policy", {"text_input": prompt, "sampling_parameters": sampling}).collect()
            return sum(int(r.outputs["num_output_tokens"].sum()) for r in responses if "num_output_tokens" in r.outputs)

        one("warm up")
        out = {}
        for c in levels:
            t0 = time.perf_counter()
            if client == "threads":
                with ThreadPoolExecutor(max_workers=c) as pool:
                    tokens = sum(tqdm(pool.map(one, prompts(c)), total=c, desc=f"triton c={c}", leave=False))
            else:
                tokens = asyncio.run(_aio_level(srv.grpc_url, prompts(c), sampling))
            out[c] = tokens / (time.perf_counter() - t0)
        return out, start_s
    finally:
        srv.stop()


@dataclass(frozen=True)
class DirectConfig:
    """One way to run vLLM directly: engine arguments and environment over the chosen settings."""

    name: str
    args: dict[str, Any]
    env: dict[str, str]


def direct_configs(model: str) -> list[DirectConfig]:
    """The settings `policy` picks on this machine, each choice undone one at a time, and the
    libraries vLLM-CPU advises preloading (tcmalloc, Intel OpenMP) toggled one at a time and
    together where this machine has them."""
    chosen = settings_for_this_machine(policy_engine_args(model))
    other_dtype = "float32" if chosen.engine_args.get("dtype") == "bfloat16" else "bfloat16"
    configs = [
        DirectConfig("chosen", chosen.engine_args, chosen.env),
        DirectConfig(other_dtype, {**chosen.engine_args, "dtype": other_dtype}, chosen.env),
        DirectConfig("one core (vLLM reserves one)", chosen.engine_args,
                     {**chosen.env, "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}),
        DirectConfig("eager" if not chosen.engine_args.get("enforce_eager") else "torch.compile",
                     {**chosen.engine_args, "enforce_eager": not chosen.engine_args.get("enforce_eager")}, chosen.env),
    ]
    available = preload_libraries()
    preloaded = set(chosen.env.get("LD_PRELOAD", "").split())
    for name, path in available.items():
        on = preloaded - {path} if path in preloaded else preloaded | {path}
        configs.append(DirectConfig(f"{'without' if path in preloaded else 'with'} {name}", chosen.engine_args,
                                    {**chosen.env, "LD_PRELOAD": " ".join(sorted(on))}))
    if len(available) > 1 and not preloaded:
        configs.append(DirectConfig(f"with {' + '.join(available)}", chosen.engine_args,
                                    {**chosen.env, "LD_PRELOAD": " ".join(available.values())}))
    if preloaded:
        configs.append(DirectConfig("no preloads", chosen.engine_args, {k: v for k, v in chosen.env.items() if k != "LD_PRELOAD"}))
    return configs


def direct_run(config: DirectConfig, levels: list[int], max_tokens: int) -> tuple[dict[int, float], float]:
    """vLLM's offline `LLM.generate` in a child process (spawned engines need a __main__ guard, and
    the environment must be set before vLLM reads it); returns tokens/s per level and start seconds."""
    spec = {"args": config.args, "levels": levels, "max_tokens": max_tokens}
    cmd = [sys.executable, "-m", "benchmarks.bench_policy", "--direct-child", json.dumps(spec)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **config.env},
                          cwd=Path(__file__).resolve().parent.parent)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    return {int(k): v for k, v in result["tok_s"].items()}, result["start_s"]


def _direct_child(spec: dict[str, Any]) -> None:
    from vllm import LLM, SamplingParams

    args = dict(spec["args"])
    args.pop("disable_log_stats", None)
    t0 = time.perf_counter()
    llm = LLM(**args)
    params = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True, temperature=0.7)
    llm.generate(["warm up"], params, use_tqdm=False)
    start_s = time.perf_counter() - t0
    out = {}
    for c in spec["levels"]:
        t0 = time.perf_counter()
        results = llm.generate(prompts(c), params, use_tqdm=False)
        out[c] = sum(len(o.token_ids) for r in results for o in r.outputs) / (time.perf_counter() - t0)
    print("RESULT " + json.dumps({"tok_s": out, "start_s": start_s}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b"])
    ap.add_argument("--levels", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--direct", default="", help="comma-separated direct configurations to run (default: all), e.g. 'chosen,no preloads'")
    ap.add_argument("--threaded-client", action="store_true",
                    help="also measure the defaults with a thread and a gRPC channel per request (the load generator of earlier runs)")
    ap.add_argument("--direct-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.direct_child:
        _direct_child(json.loads(args.direct_child))
        return 0
    print(f"hardware: {cpu_model()}", flush=True)
    for model in args.models:
        rows = []
        tri, tri_start = triton_run(model, args.levels, args.max_tokens)
        rows.append(("policy through Triton (project defaults)", tri, tri_start))
        if args.threaded_client:
            tri, tri_start = triton_run(model, args.levels, args.max_tokens, client="threads")
            rows.append(("... a thread + channel per request", tri, tri_start))
        tri, tri_start = triton_run(model, args.levels, args.max_tokens, {"enforce_eager": True})
        rows.append(("policy through Triton, eager", tri, tri_start))
        if preload_libraries():
            # An LD_PRELOAD in the environment, even empty, is kept as given: no preloads.
            tri, tri_start = triton_run(model, args.levels, args.max_tokens, env={"LD_PRELOAD": ""})
            rows.append(("policy through Triton, no preloads", tri, tri_start))
        wanted = {name.strip() for name in args.direct.split(",") if name.strip()}
        configs = [c for c in direct_configs(model) if not wanted or c.name in wanted]
        for config in tqdm(configs, desc=f"{model}: direct vLLM configurations", unit="config"):
            tok_s, start_s = direct_run(config, args.levels, args.max_tokens)
            rows.append((f"vLLM direct, {config.name}", tok_s, start_s))
        direct_rows = [r for r in rows if r[0].startswith("vLLM direct")]
        fastest = {c: max(r[1][c] for r in direct_rows) for c in args.levels}
        print(f"\n{model}, {args.max_tokens} tokens per request; ratio = tokens/s over the fastest direct vLLM "
              f"configuration at the same concurrency; {cpu_model()}")
        print(f"{'configuration':<44}{'start s':>8}" + "".join(f"{f'tok/s @{c}':>12}{'ratio':>7}" for c in args.levels))
        for name, tok_s, start_s in rows:
            print(f"{name:<44}{start_s:>8.0f}" + "".join(f"{tok_s[c]:>12.1f}{tok_s[c] / fastest[c]:>7.2f}" for c in args.levels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
