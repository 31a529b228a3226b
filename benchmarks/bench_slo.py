"""Benchmark: SLO attainment of reasoning programs under load, `dynasor` against the baseline a
Triton + vLLM user runs today (fixed-n self-consistency straight to `policy`), on the real server.

One server (Qwen, the project's defaults) serves every point in turn:
1. engine calibration: `policy` tokens/s at several sequence concurrencies (fixed-length samples),
   and the time to first token of one GSM8K prompt: what the simulator's engine model is fitted to;
2. a rate sweep at one SLO scale and an SLO-scale sweep at one rate, each point a headless Locust
   run (loadtest/locustfile.py, one user class at a time, open-loop Poisson arrivals) on the
   questions whose traces are committed (GSM8K math or HumanEval code), so the simulator can replay
   the same questions; with `--floor`, both systems are held to a quality floor (dynasor refuses or
   degrades below it, the baseline's answers are judged against it).
Everything measured goes to one JSON file (`--out`), which `loadtest.slo_report` turns into the
figures, the ratios and the simulator's check.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.engine_settings import cpu_model
from engines.grpc_stream import StreamCall
from scheduler_backend.datasets import load
from serving.launcher import start_server

USER_CLASSES = {"dynasor": "DynasorGrpcUser", "baseline": "BaselineUser"}


def _floats(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def policy_tokens(url: str, prompt: str, sampling: dict[str, Any]) -> tuple[int, float]:
    """(output tokens, seconds to the first response) of one streamed `policy` request."""
    t0 = time.perf_counter()
    first = 0.0
    tokens = 0
    for r in StreamCall(url, "policy", {"text_input": prompt, "sampling_parameters": json.dumps(sampling)}):
        first = first or time.perf_counter() - t0
        if "num_output_tokens" in r.outputs:
            tokens += int(r.outputs["num_output_tokens"].sum())
    return tokens, first


def calibrate_engine(url: str, prompt: str, levels: list[int], max_tokens: int) -> dict[str, Any]:
    """Tokens/s at each count of sequences in flight (requests of n=8 samples, as programs send,
    fixed length via ignore_eos; the better of two tries, since anything else running on the
    host only ever slows it), and the first-token time of `prompt` alone (its prefill)."""
    policy_tokens(url, prompt, {"max_tokens": 4})  # warm up
    ttft = min(policy_tokens(url, prompt, {"max_tokens": 1})[1] for _ in range(3))
    points = []
    for seqs in tqdm(levels, desc="engine calibration", unit="level"):
        n = min(seqs, 8)
        requests = max(seqs // n, 1)
        sampling = {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7, "n": n}
        best = 0.0
        for _ in range(2):
            with ThreadPoolExecutor(requests) as pool:
                t0 = time.perf_counter()
                tokens = sum(t for t, _ in pool.map(policy_tokens, [url] * requests, [prompt] * requests, [sampling] * requests))
                best = max(best, tokens / (time.perf_counter() - t0))
        points.append({"sequences": n * requests, "tokens_per_s": best})
    return {"points": points, "ttft_s": ttft, "prompt_chars": len(prompt), "max_tokens": max_tokens}


WORKLOADS = {"math": ("gsm8k", "self-consistency"), "code": ("humaneval", "code")}


def point_duration_s(args: argparse.Namespace, rate: float) -> float:
    """Arrivals per point for `--duration-s`, or for as long as `--programs` arrivals take at `rate`."""
    return args.programs / rate if args.programs else args.duration_s


def locust_point(system: str, rate: float, slo_scale: float, args: argparse.Namespace, url: str, out_dir: Path) -> dict[str, Any]:
    """One headless Locust run of one user class; its summary JSON (programs that ended)."""
    tag = f"{args.workload}-{system}-r{rate:g}-s{slo_scale:g}"
    duration_s = point_duration_s(args, rate)
    dataset, program = WORKLOADS[args.workload]
    summary = out_dir / f"{tag}.json"
    cmd = [
        str(Path(sys.executable).parent / "locust"), "-f", "loadtest/locustfile.py", "--headless", "--only-summary",
        "-u", "1", "-r", "1", "-t", f"{duration_s:.0f}s", "--grpc-url", url,
        "--program-rate", f"{rate:g}", "--slo-scale", f"{slo_scale:g}", "--base-deadline-s", f"{args.base_deadline_s:g}",
        "--dataset", dataset, "--program", program, "--questions", str(args.questions), "--budget", str(args.budget),
        "--floor", str(args.floor), "--floor-action", args.floor_action,
        "--max-tokens", str(args.max_tokens), "--seed", str(args.seed), "--summary-json", str(summary),
        "--exit-code-on-error", "0", "--csv", str(out_dir / tag), "--records-json", str(out_dir / f"{tag}.records.jsonl"),
        USER_CLASSES[system],
    ]
    env = {**os.environ, "PYTHONPATH": "."}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration_s + 10 * args.base_deadline_s + 120)
    if proc.returncode != 0 or not summary.exists():
        raise RuntimeError(f"locust {tag} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(summary.read_text())
    cls = next(iter(data["classes"].values()))
    return {"system": system, "rate": rate, "slo_scale": slo_scale, "wall_s": round(time.perf_counter() - t0, 1),
            "duration_s": data["duration_s"], "unfinished": data["settings"]["unfinished_at_stop"], **cls}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="math",
                    help="math: GSM8K self-consistency; code: HumanEval, the code program (behaviour votes)")
    ap.add_argument("--systems", default="dynasor,baseline")
    ap.add_argument("--rates", type=_floats, default=_floats("0.1,0.2,0.3,0.45,0.7,1.0"), help="programs/s, the rate sweep")
    ap.add_argument("--rate-sweep-scale", type=float, default=2.0, help="the SLO scale of the rate sweep")
    ap.add_argument("--slo-scales", type=_floats, default=_floats("0.25,0.5,1,4"), help="the SLO-scale sweep (plus the rate sweep's scale)")
    ap.add_argument("--scale-sweep-rate", type=float, default=0.1, help="programs/s of the SLO-scale sweep")
    ap.add_argument("--base-deadline-s", type=float, default=20.0, help="deadline at SLO scale 1")
    ap.add_argument("--duration-s", type=float, default=120.0, help="arrivals per point for this long")
    ap.add_argument("--programs", type=int, default=0,
                    help="arrivals per point instead of --duration-s (100: a binomial error of at most 5 points on accuracy)")
    ap.add_argument("--floor", type=int, default=0, help="the quality floor in samples both systems are judged at (0: none)")
    ap.add_argument("--floor-action", choices=("degrade", "refuse"), default="refuse", help="dynasor's, below the floor")
    ap.add_argument("--budget", type=int, default=8, help="samples per program (dynasor's budget, the baseline's n)")
    ap.add_argument("--max-tokens", type=int, default=0, help="per sample (default: the committed traces' cap, 640 math, 512 code)")
    ap.add_argument("--questions", type=int, default=0,
                    help="the first N test questions (default: the traced ones, 200 GSM8K or all 164 HumanEval)")
    ap.add_argument("--calibration-levels", default="1,8,16,32,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine-only", action="store_true",
                    help="measure the engine again and replace only that part of --out (a quiet machine matters here)")
    ap.add_argument("--out", default="runs/slo/real.json")
    args = ap.parse_args(argv)
    args.questions = args.questions or (200 if args.workload == "math" else 164)
    args.max_tokens = args.max_tokens or (640 if args.workload == "math" else 512)
    # SIGTERM unwinds like Ctrl-C: the server and the Locust run in flight are stopped by pid.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(USER_CLASSES)
    if unknown:
        ap.error(f"--systems: unknown {sorted(unknown)}; choose from {sorted(USER_CLASSES)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    points = [(r, args.rate_sweep_scale) for r in args.rates]
    points += [(args.scale_sweep_rate, s) for s in args.slo_scales if (args.scale_sweep_rate, s) not in points]
    hardware = cpu_model()
    each = f"{args.programs} programs" if args.programs else f"{args.duration_s:g} s"
    print(f"hardware: {hardware}\n{args.workload}: {len(points)} points x {len(systems)} systems, {each} each", flush=True)
    result: dict[str, Any] = {"hardware": hardware, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "engine_only")},
                              "points": []}
    if args.engine_only:
        result = json.loads(out.read_text())
        points = []
    elif out.exists():
        # A later run adds or replaces points (same seed: the same arrivals and questions); what it
        # does not run is kept, with the first run's settings, which must agree on the workload.
        before = json.loads(out.read_text())
        same = ("workload", "base_deadline_s", "duration_s", "programs", "budget", "max_tokens", "questions", "seed", "floor",
                "floor_action")  # which rates and scales a run adds is its own: each point carries them
        defaults = {"workload": "math", "programs": 0, "floor": 0, "floor_action": "refuse"}  # runs from before these settings
        differ = [k for k in same if before["settings"].get(k, defaults.get(k)) != result["settings"][k]]
        if differ:
            ap.error(f"{out} was measured with other {', '.join(differ)}; write to another --out")
        rerun = {(s, r, c) for s in systems for r, c in points}
        result["points"] = [p for p in before["points"] if (p["system"], p["rate"], p["slo_scale"]) not in rerun]
    srv = start_server(policy_model=args.model)
    try:
        srv.wait_ready(timeout_s=900)
        prompt = load(WORKLOADS[args.workload][0], "test", 1)[0].question
        levels = [int(x) for x in args.calibration_levels.split(",")]
        result["engine"] = calibrate_engine(srv.grpc_url, prompt, levels, max_tokens=96)
        print("engine:", json.dumps(result["engine"]), flush=True)
        for rate, scale in tqdm(points, desc="sweep points", unit="pt"):
            for system in systems:
                row = locust_point(system, rate, scale, args, srv.grpc_url, out.parent)
                result["points"].append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(result, indent=1))
    finally:
        srv.stop()
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
