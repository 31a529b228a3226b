"""Benchmark, simulated: does a fleet of GPU replicas sustain k times one replica's rate, and what
does a balancer that does not know programs lose? The simulator (loadtest/simulator.py) runs the
real runner, scheduler and self-consistency programs on the GPU preset engine
(engines/simulated.py PRESETS['gpu']: an assumed H100 serving an 8B model; no GPU is used) at 1,
2, 4 and 8 replicas, balanced two ways:

- per program (`least-loaded`): each program goes whole to the replica with the fewest programs in
  flight, as HAProxy's `leastconn` does with program streams in docs/fleet.md; its later rounds and
  probes find their prompt prefix in that engine's cache;
- round-robin per request (`per-request`): one runner in front of k engines that take its engine
  calls in turn, as a balancer blind to programs would spread them; a program's calls land on
  different engines, and each pays its prompt's prefill again.

Settings are the math SLO sweep at a quality floor (docs/results/slo.md; its real run
docs/results/slo_floor_math_real.json): GSM8K traces of the first 200 test questions, budget 8
samples of at most 640 tokens, deadline = SLO scale 2 x 20 s, a floor of 2 samples with `refuse`.
Attainment counts answers resting on the floor: without one, an overloaded dynasor answers in time
by probing unfinished samples and its attainment barely falls (docs/results/slo.md's GPU scale
section finds no limit), so the rate would measure nothing. The sustainable rate is the 90%
crossing of attainment at the floor over a rate grid per replica; every point runs
`--seconds` of Poisson arrivals per replica (programs = rate x seconds).

Writes docs/results/fleet_scaling.json and fleet_scaling.md; prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.engine_settings import cpu_model
from engines.simulated import PRESETS
from loadtest.simulator import SimConfig, sustainable_rate, sweep
from loadtest.slo_report import ROOT, load_real
from scheduler_backend.quality import QualityFloor
from scheduler_backend.traces import load_traces

BALANCERS = {"least-loaded": "per program (least-loaded)", "per-request": "round-robin per request"}
SYSTEM = "dynasor"
TARGET = 0.9


def at_floor(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with attainment read at the floor, for `sustainable_rate`."""
    return [{**r, "attainment": r["attainment_at_floor"]} for r in rows]


def knee_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The highest tested rate still at the target: what the fleet does just below its limit."""
    ok = [r for r in rows if r["attainment_at_floor"] >= TARGET]
    return max(ok, key=lambda r: r["rate"]) if ok else None


def summarize(rows: Sequence[Mapping[str, Any]], replicas: Sequence[int], scale: float, balancers: Sequence[str]) -> list[dict[str, Any]]:
    """One line per replica count: each balancer's sustainable rate, per replica, and its ratio to
    one replica's (the same system at 1 replica for both balancers)."""
    def rate(balancer: str, k: int) -> float | None:
        own = [r for r in rows if r["balancer"] == balancer and r["replicas"] == k]
        return sustainable_rate(at_floor(own), SYSTEM, scale, TARGET)

    base = rate("least-loaded", 1)
    out = []
    for k in replicas:
        line: dict[str, Any] = {"replicas": k}
        for balancer in balancers:
            name = "least-loaded" if k == 1 else balancer
            sustained = rate(name, k)
            knee = knee_row([r for r in rows if r["balancer"] == name and r["replicas"] == k])
            line[balancer] = {
                "sustainable": sustained, "per_replica": None if sustained is None else sustained / k,
                "vs_one_replica": None if sustained is None or not base else sustained / k / base,
                "at_range_end": sustained is not None and sustained >= max(r["rate"] for r in rows if r["replicas"] == k),
                "knee": None if knee is None else {"rate": knee["rate"], "accuracy": knee["accuracy"], "tokens": knee["mean_tokens"],
                                                   "prefill_ms": knee["prefill_s_per_program"] * 1e3}}
        out.append(line)
    return out


def _show(value: float | None, form: str, floor: bool = False, missing: str = "below the range") -> str:
    """A number, "at least" one where the limit is the top of the rates tried."""
    if value is None:
        return missing
    return ("at least " if floor else "") + format(value, form)


def markdown(table: Sequence[Mapping[str, Any]], balancers: Sequence[str]) -> list[str]:
    """The scaling table, then each balancer's highest tested rate at the target."""
    head = ["| replicas | " + " | ".join(f"{BALANCERS[b]}: sustainable programs/s | per replica | vs 1 replica" for b in balancers)
            + " |", "|---:|" + "---:|---:|---:|" * len(balancers)]
    body = []
    for line in table:
        cells = []
        for balancer in balancers:
            b = line[balancer]
            cells += [_show(b["sustainable"], ".1f", b["at_range_end"]), _show(b["per_replica"], ".2f", b["at_range_end"]),
                      _show(b["vs_one_replica"], ".2f", b["at_range_end"], "n/a" if b["sustainable"] is not None else "-")]
        body.append(f"| {line['replicas']} | " + " | ".join(cells) + " |")
    knees = ["| replicas | balancer | highest tested rate at 90%, programs/s (all replicas) | accuracy there | tokens per program | "
             "prefill per program, ms |",
             "|---:|---|---:|---:|---:|---:|"]
    for line in table:
        for balancer in balancers:
            label, knee = BALANCERS[balancer], line[balancer]["knee"]
            if knee is not None:
                knees.append(f"| {line['replicas']} | {label} | {knee['rate']:g} | {knee['accuracy']:.1%} | {knee['tokens']:,.0f} | "
                             f"{knee['prefill_ms']:.1f} |")
    return [*head, *body, "", *knees]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--real", default=str(ROOT / "docs" / "results" / "slo_floor_math_real.json"),
                    help="the SLO run whose settings (budget, tokens, deadline, floor, questions) the sweep takes")
    ap.add_argument("--traces", default=str(ROOT / "data" / "traces" / "gsm8k-test-sc16.jsonl"))
    ap.add_argument("--replicas", default="1,2,4,8")
    ap.add_argument("--rates", default="9,11,12,13,14,16", help="programs/s per replica")
    ap.add_argument("--seconds", type=float, default=240.0, help="seconds of arrivals per point (programs = rate x seconds)")
    ap.add_argument("--seeds", type=int, default=1, help="arrival seeds per point (their mean)")
    ap.add_argument("--seed", type=int, default=0, help="the first arrival seed")
    ap.add_argument("--balancers", default=",".join(BALANCERS), help=f"of {', '.join(BALANCERS)}")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "fleet_scaling"), help="path without suffix: .json and .md")
    args = ap.parse_args(argv)
    s = load_real(args.real)["settings"]
    traces = load_traces(args.traces)[: s["questions"]]
    scale = s["rate_sweep_scale"]
    config = SimConfig(budget=s["budget"], max_tokens=s["max_tokens"], base_deadline_s=s["base_deadline_s"],
                       floor=QualityFloor(s["floor"], s["floor_action"]), seed=args.seed)
    balancers = [b for b in BALANCERS if b in args.balancers.split(",")]
    replicas = [int(x) for x in args.replicas.split(",")]
    per_replica = [float(x) for x in args.rates.split(",")]
    points = [(k, balancer, rate) for k in replicas for balancer in balancers if k > 1 or balancer == "least-loaded"
              for rate in per_replica]
    start = time.perf_counter()
    rows = []
    bar = tqdm(points, desc="fleet scaling (simulated)", unit="pt")
    for k, balancer, rate in bar:
        bar.set_postfix_str(f"{k} replicas, {balancer}, {rate:g}/s per replica")
        row = sweep([SYSTEM], traces, rates=[rate * k], slo_scales=[scale], programs=round(rate * k * args.seconds), model=PRESETS["gpu"],
                    config=replace(config, replicas=k, balancer=balancer), seeds=args.seeds)[0]
        rows.append({**row, "replicas": k, "balancer": balancer})
    table = summarize(rows, replicas, scale, balancers)
    wall = time.perf_counter() - start
    settings = {"engine": "gpu", "engine_model": asdict(PRESETS["gpu"]), "system": SYSTEM, "slo_scale": scale,
                "deadline_s": scale * s["base_deadline_s"], "budget": s["budget"], "max_tokens": s["max_tokens"],
                "floor": s["floor"], "floor_action": s["floor_action"], "questions": s["questions"], "rates_per_replica": per_replica,
                "seconds_per_point": args.seconds, "seeds": args.seeds, "seed": args.seed, "balancers": balancers, "target": TARGET, "wall_s": wall, "machine": cpu_model()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "table": table, "rows": rows}, indent=1) + "\n")
    programs = ", ".join(f"{k} replica(s): {round(min(per_replica) * k * args.seconds):,} to {round(max(per_replica) * k * args.seconds):,}"
                         for k in replicas)
    md = ["<!-- generated by loadtest/fleet_scaling.py (make bench-fleet-sim); do not edit -->", "",
          "# Fleet scaling on the GPU preset (simulated)", "",
          "Simulated, not measured: no GPU was used. The engine is engines/simulated.py `PRESETS['gpu']`, an assumption "
          f"(vLLM on one H100 serving an 8B model: decode step {PRESETS['gpu'].fixed_s * 1e3:g} ms + "
          f"{PRESETS['gpu'].per_seq_s * 1e6:g} us x batch, up to {PRESETS['gpu'].max_num_seqs} sequences, prefill "
          f"{PRESETS['gpu'].prefill_s_per_token * 1e6:g} us per prompt token, a prompt prefix resident from an earlier call of the "
          "same program not prefilled again). Programs: dynasor self-consistency on GSM8K traces of the first "
          f"{s['questions']} test questions, budget {s['budget']} samples of at most {s['max_tokens']} tokens, deadline "
          f"{scale * s['base_deadline_s']:g} s (SLO scale {scale:g}), quality floor {s['floor']} samples ({s['floor_action']}). "
          f"Sustainable rate: the {TARGET:.0%} crossing of SLO attainment at the floor, over {', '.join(f'{r:g}' for r in per_replica)} "
          f"programs/s per replica, {args.seconds:g} s of Poisson arrivals per point ({programs} programs a point), "
          f"{args.seeds} seed(s). At 1 replica the two balancers are the same system.", "",
          *markdown(table, balancers), "",
          f"Reproduce: `make bench-fleet-sim` (`python -m loadtest.fleet_scaling`); {wall / 60:.1f} minutes on {cpu_model()}.", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"written: {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
