"""Benchmark: two replicas behind HAProxy under a steady Locust load (the project's locustfile,
`DynasorGrpcUser`, Poisson arrivals through the proxy); halfway through, one replica is drained, and
in a second run on a fresh fleet one replica is SIGKILLed. Printed: programs per replica before the
event, programs lost and errored, and for the kill the time from the kill to each error at the
client and errors among programs sent afterwards. SmolLM2, so that two replicas fit on 2 cores.
Writes runs/fleet/fleet.json and prints the table docs/fleet.md quotes.

A first phase on its own fresh fleet measures each replica's `policy` tokens/s while every replica
runs the same number of sequences at once (they share this machine's cores, as under the load):
runs/fleet/engine.json, what loadtest/fleet_agreement.py fits the simulator's engine to."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_slo import policy_tokens
from client.dynasor_client import DynasorClient
from engines.engine_settings import cpu_model
from scheduler_backend.datasets import load
from serving.fleet import Fleet, start_fleet
from serving.launcher import TritonServer


def _metric(replica: TritonServer, name: str) -> float:
    return sum(replica.metric_values(name).values())


def _taken(replica: TritonServer) -> float:
    """Programs a replica has taken: ended (any outcome but invalid) plus in flight."""
    return _metric(replica, "dynasor_programs_total") + _metric(replica, "dynasor_programs_in_flight")


def _locust(fleet: Fleet, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", "loadtest/locustfile.py", "--headless", "--only-summary",
           "-u", "1", "-r", "1", "-t", f"{args.duration_s:.0f}s", "--grpc-url", fleet.grpc_url,
           "--program-rate", f"{args.rate:g}", "--slo-scale", "1", "--base-deadline-s", f"{args.deadline_s:g}",
           "--dataset", "gsm8k", "--questions", "100", "--budget", str(args.budget), "--max-tokens", str(args.max_tokens),
           "--seed", str(args.seed), "--resubmit", str(args.resubmit), "--exit-code-on-error", "0", "--summary-json", str(out.with_suffix(".summary.json")),
           "--records-json", str(out), "DynasorGrpcUser"]
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": "."}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _timed(url: str, prompt: str, sampling: dict[str, Any], t0: float) -> tuple[int, float]:
    """(output tokens, seconds from `t0` to its end) of one `policy` request."""
    tokens, _ = policy_tokens(url, prompt, sampling)
    return tokens, time.perf_counter() - t0


def calibrate(args: argparse.Namespace, levels: list[int], max_tokens: int = 96) -> dict[str, Any]:
    """Tokens/s per replica at each count of sequences in flight per replica, every replica loaded
    alike at the same time (requests of up to 8 fixed-length samples, as bench_slo's calibration;
    the better of two tries), and the first-token time of one GSM8K prompt on an idle fleet (its
    prefill)."""
    fleet = start_fleet(2, args.model, engine_overrides={"enforce_eager": True})
    try:
        fleet.wait_ready()
        urls = [r.grpc_url for r in fleet.replicas]
        prompt = load("gsm8k", "test", 1)[0].question
        for url in urls:
            policy_tokens(url, prompt, {"max_tokens": 4})  # warm up
        ttft = min(policy_tokens(urls[0], prompt, {"max_tokens": 1})[1] for _ in range(3))
        points = []
        for seqs in levels:
            n = min(seqs, 8)
            requests = max(seqs // n, 1)
            sampling = {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7, "n": n}
            best = 0.0
            for _ in range(2):
                with ThreadPoolExecutor(requests * len(urls)) as pool:
                    t0 = time.perf_counter()
                    done = [f.result() for f in [pool.submit(_timed, url, prompt, sampling, t0) for url in urls for _ in range(requests)]]
                # every replica's tokens over the time to the last one's end: a replica done early
                # leaves the other the cores for a while, which per-replica times would credit to it
                best = max(best, sum(t for t, _ in done) / max(s for _, s in done) / len(urls))
            points.append({"sequences": n * requests, "tokens_per_s": best})
            print(f"calibration: {n * requests} sequences per replica: {best:.0f} tok/s per replica", flush=True)
    finally:
        fleet.stop()
    return {"hardware": cpu_model(), "model": args.model, "replicas": len(urls), "points": points, "ttft_s": ttft,
            "prompt_chars": len(prompt), "max_tokens": max_tokens}


def scenario(kind: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """One fleet, one load, one event (`drain` or `kill`) halfway through."""
    fleet = start_fleet(2, args.model, engine_overrides={"enforce_eager": True})
    try:
        fleet.wait_ready()
        records_path = out_dir / f"{kind}.records.jsonl"
        locust = _locust(fleet, args, records_path)
        time.sleep(args.duration_s / 2)
        # The event meets programs in flight on its replica (at most 20 s more of waiting for one).
        wait_until = time.monotonic() + 20
        while _metric(fleet.replicas[1], "dynasor_programs_in_flight") < 1 and time.monotonic() < wait_until:
            time.sleep(0.05)
        before = [_taken(r) for r in fleet.replicas]
        event_at = time.time()
        drainer = None
        in_flight_at_event = _metric(fleet.replicas[1], "dynasor_programs_in_flight")
        if kind == "drain":
            drainer = threading.Thread(target=DynasorClient(fleet.replicas[1].grpc_url, timeout_s=args.grace_s + 60).drain, args=(args.grace_s,))
            drainer.start()
        else:
            os.killpg(fleet.replicas[1].process.pid, signal.SIGKILL)
        output, _ = locust.communicate(timeout=args.duration_s + args.deadline_s + 120)
        if drainer is not None:
            drainer.join(timeout=args.grace_s + 60)
        if locust.returncode != 0 or not records_path.exists():
            raise RuntimeError(f"locust failed ({locust.returncode}):\n{output[-3000:]}")
        records = [json.loads(line) for line in records_path.read_text().splitlines()]
        unfinished = json.loads(records_path.with_suffix(".summary.json").read_text())["settings"]["unfinished_at_stop"]
        survivor_after = _taken(fleet.replicas[0])
    finally:
        fleet.stop()
    errored = [r for r in records if r["error"]]
    ended_at = [r["started_at"] + r["latency_s"] for r in errored]
    return {
        "event": kind, "programs": len(records), "before_event_per_replica": before,
        "share_before_event": [round(b / max(sum(before), 1), 3) for b in before],
        "survivor_programs_after_event": survivor_after - before[0],
        "in_flight_on_event_replica": in_flight_at_event,
        **unended(records, unfinished),
        "errored": len(errored),
        # Refused by the replica the proxy chose (it drained before the proxy's next check) and sent again.
        "resubmitted": sum(1 for r in records if (r.get("server") or {}).get("resubmissions", 0) > 0),
        "errored_sent_after_event": sum(1 for r in errored if r["started_at"] > event_at),
        "seconds_from_event_to_error": sorted(round(t - event_at, 2) for t in ended_at),
        "errors": sorted({r["error"][:160] for r in errored}),
    }


def unended(records: list[dict[str, Any]], unfinished: int) -> dict[str, int]:
    """Programs with neither an answer nor an error. Lost: a stream that ended without its final
    response, or still open when the load test stopped. Late: the client closed it at its limit
    (deadline + grace, as a user with a deadline does; the server then cancels it): a missed
    deadline, not a loss."""
    open_ended = [r for r in records if not r["ended"] and not r["error"]]
    late = sum(1 for r in open_ended if r["latency_s"] >= r["deadline_s"] + r["grace_s"])
    return {"lost": len(open_ended) - late + unfinished, "late": late}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rate", type=float, default=0.4, help="programs per second through the proxy")
    # 240 s: about 48 programs before the event, so a run's SLO attainment has a binomial standard
    # error near 5 points rather than the 7-10 of the 120 s runs (the agreement's tolerance is 15).
    ap.add_argument("--duration-s", type=float, default=240.0)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--deadline-s", type=float, default=60.0, help="every program's deadline (long: this measures failures, not SLOs)")
    ap.add_argument("--grace-s", type=float, default=60.0, help="the drained replica's grace period")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resubmit", type=int, default=2,
                    help="the Locust users resubmit a program refused before it streamed anything (the client library's resubmit)")
    ap.add_argument("--out", default="runs/fleet/fleet.json")
    ap.add_argument("--phases", default="calibrate,events", help="calibrate (runs/fleet/engine.json), events (drain and kill)")
    ap.add_argument("--calibration-levels", default="1,4,8,16,24,32", help="sequences in flight per replica")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"hardware: {cpu_model()}", flush=True)
    phases = args.phases.split(",")
    if "calibrate" in phases:
        engine = calibrate(args, [int(x) for x in args.calibration_levels.split(",")])
        (out.parent / "engine.json").write_text(json.dumps(engine, indent=2) + "\n")
        print(f"written: {out.parent / 'engine.json'}", flush=True)
    if "events" not in phases:
        return 0
    rows = []
    for kind in ("drain", "kill"):
        print(f"fleet: {kind} run, {args.rate:g} programs/s for {args.duration_s:.0f} s, the event at {args.duration_s / 2:.0f} s", flush=True)
        rows.append(scenario(kind, args, out.parent))
    out.write_text(json.dumps({"hardware": cpu_model(), "settings": vars(args), "runs": rows}, indent=2) + "\n")
    print(f"\n{args.model}, 2 replicas behind HAProxy, {args.rate:g} programs/s, {cpu_model()}")
    print(f"{'event':<7}{'programs':>9}{'share r1/r2 before':>20}{'in flight on r2':>16}{'lost':>6}{'late':>6}{'errored':>9}{'err. sent after':>16}"
          f"{'resubmitted':>12}  seconds from event to each error")
    for r in rows:
        share = "/".join(f"{s:.0%}" for s in r["share_before_event"])
        print(f"{r['event']:<7}{r['programs']:>9}{share:>20}{r['in_flight_on_event_replica']:>16.0f}{r['lost']:>6}{r['late']:>6}{r['errored']:>9}"
              f"{r['errored_sent_after_event']:>16}{r['resubmitted']:>12}  {r['seconds_from_event_to_error']}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
