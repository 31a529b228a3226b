"""Benchmark: two replicas behind HAProxy under a steady Locust load (the project's locustfile,
`DynasorGrpcUser`, Poisson arrivals through the proxy); halfway through, one replica is drained, and
in a second run on a fresh fleet one replica is SIGKILLed. Printed: programs per replica before the
event, programs lost and errored, and for the kill the time from the kill to each error at the
client and errors among programs sent afterwards. SmolLM2, so that two replicas fit on 2 cores.
Writes runs/fleet/fleet.json and prints the table docs/fleet.md quotes."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from client.dynasor_client import DynasorClient
from engines.engine_settings import cpu_model
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
           "--seed", str(args.seed), "--exit-code-on-error", "0", "--summary-json", str(out.with_suffix(".summary.json")),
           "--records-json", str(out), "DynasorGrpcUser"]
    return subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": "."}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
        # Lost: sent, and neither answered nor failed (a stream that never ended, or still open at the end).
        "lost": sum(1 for r in records if not r["ended"] and not r["error"]) + unfinished,
        "errored": len(errored),
        "errored_sent_after_event": sum(1 for r in errored if r["started_at"] > event_at),
        "seconds_from_event_to_error": sorted(round(t - event_at, 2) for t in ended_at),
        "errors": sorted({r["error"][:160] for r in errored}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rate", type=float, default=0.4, help="programs per second through the proxy")
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--deadline-s", type=float, default=60.0, help="every program's deadline (long: this measures failures, not SLOs)")
    ap.add_argument("--grace-s", type=float, default=60.0, help="the drained replica's grace period")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/fleet/fleet.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"hardware: {cpu_model()}", flush=True)
    rows = []
    for kind in ("drain", "kill"):
        print(f"fleet: {kind} run, {args.rate:g} programs/s for {args.duration_s:.0f} s, the event at {args.duration_s / 2:.0f} s", flush=True)
        rows.append(scenario(kind, args, out.parent))
    out.write_text(json.dumps({"hardware": cpu_model(), "settings": vars(args), "runs": rows}, indent=2) + "\n")
    print(f"\n{args.model}, 2 replicas behind HAProxy, {args.rate:g} programs/s, {cpu_model()}")
    print(f"{'event':<7}{'programs':>9}{'share r1/r2 before':>20}{'in flight on r2':>16}{'lost':>6}{'errored':>9}{'err. sent after':>16}"
          "  seconds from event to each error")
    for r in rows:
        share = "/".join(f"{s:.0%}" for s in r["share_before_event"])
        print(f"{r['event']:<7}{r['programs']:>9}{share:>20}{r['in_flight_on_event_replica']:>16.0f}{r['lost']:>6}{r['errored']:>9}"
              f"{r['errored_sent_after_event']:>16}  {r['seconds_from_event_to_error']}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
