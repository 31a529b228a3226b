"""The simulator's replica mode against the real two-replica fleet (`make bench-fleet`): the same
load simulated on two replicas behind the agent-weighted balancer (HAProxy's `leastconn` counts
the program streams each replica serves for its weight, which each replica's agent check sets from
its predicted backlog; the simulator, the programs each has in flight for the weight the same
agent would answer), compared
before the drain or kill, on what the issue asks: each replica's share of the programs (35-65%)
and SLO attainment within the 15 points the single-replica agreement uses
(loadtest/slo_report.py `AGREEMENT_POINTS`).

What the simulation is given, all from `make bench-fleet`'s own files (runs/fleet/):
- the engine: each replica's `policy` tokens/s measured while both replicas ran the same number
  of sequences at once (engine.json), fitted as the CPU preset is (`slo_report.engine_model`);
- the samples: SmolLM2's own sample lengths and answers on these questions, taken from the real
  programs' final reports (each program's answer clusters, unanswered samples and tokens: an
  unanswered sample is counted at the token cap when the tokens allow it, the rest share the
  remainder evenly), pooled over both runs per question;
- the load: Poisson arrivals at the real rate for as long as the real run had before its event,
  the same budget, token cap and deadline, the server's default allocation and round size, and
  `--seeds` arrival seeds (the real run is one draw of about twenty programs).

Writes docs/results/fleet_agreement.json and prints the table docs/fleet.md quotes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.engine_settings import cpu_model
from loadtest.simulator import SimConfig, simulate
from loadtest.slo import ProgramRecord, percentile, summarize
from loadtest.slo_report import AGREEMENT_POINTS, ROOT, engine_model
from scheduler_backend.datasets import load

SHARE_RANGE = (0.35, 0.65)


def load_records(path: Path) -> list[ProgramRecord]:
    """A Locust records file, in the order the programs were sent."""
    records = [ProgramRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r.started_at)


def split_samples(record: ProgramRecord, max_tokens: int) -> list[dict[str, Any]]:
    """The samples one real program voted on, rebuilt from its final report: each answer cluster's
    samples, then the unanswered ones; lengths as the module says."""
    server = record.server or {}
    answers = [c["answer"] for c in server.get("clusters", []) for _ in range(c["size"])]
    unanswered = int(server.get("no_answer", 0))
    steps = len(answers) + unanswered
    if not steps:
        return []
    if unanswered and record.tokens >= unanswered * max_tokens + len(answers):
        rest = (record.tokens - unanswered * max_tokens) // max(len(answers), 1)
        lengths = [rest] * len(answers) + [max_tokens] * unanswered
    else:
        lengths = [max(record.tokens // steps, 1)] * steps
    reasons = ["stop"] * len(answers) + ["length" if n >= max_tokens else "stop" for n in lengths[len(answers):]]
    return [{"answer": a, "tokens": n, "finish_reason": f, "correct": None}
            for a, n, f in zip([*answers, *[None] * unanswered], lengths, reasons)]


def traces_from_records(records: Sequence[ProgramRecord], max_tokens: int) -> list[dict[str, Any]]:
    """One trace per question the real programs answered, with every sample they voted on."""
    problems = {p.id: p for p in load("gsm8k", "test")}
    by_question: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if not r.error:
            by_question.setdefault(r.question_id, []).extend(split_samples(r, max_tokens))
    return [{"id": qid, "program": "self-consistency", "question": problems[qid].question, "gold": problems[qid].gold,
             "samples": samples} for qid, samples in sorted(by_question.items()) if samples]


def before_event(records: Sequence[ProgramRecord], taken: int) -> list[ProgramRecord]:
    """The programs sent before the event: the first `taken` (what the replicas had taken by then,
    by their own counters), less those the event itself ended with an error (a killed replica's)."""
    return [r for r in records[:taken] if not r.error]


def budget_cut(records: Sequence[ProgramRecord], budget: int) -> list[int]:
    """[programs the server gave fewer samples than asked (fitting them to the deadline), programs]."""
    answered = [r for r in records if not r.error]
    return [sum((r.server or {}).get("budget", budget) < budget for r in answered), len(answered)]


def real_point(run: Mapping[str, Any], records: Sequence[ProgramRecord], budget: int) -> dict[str, Any]:
    """Share per replica (the replicas' own counters) and SLO attainment before the event; how
    often the server cut budgets before and after it."""
    taken = round(sum(run["before_event_per_replica"]))
    before = before_event(records, taken)
    s = summarize(before, 1.0)["DynasorGrpcUser"]
    latencies = [r.latency_s for r in before]
    return {"event": run["event"], "programs": len(before), "share": run["share_before_event"], "attainment": s.attainment,
            "p50_latency_s": percentile(latencies, 50), "p90_latency_s": percentile(latencies, 90), "mean_tokens": s.mean_tokens,
            "mean_steps": statistics.fmean(r.steps for r in before), "budget_cut_before": budget_cut(before, budget),
            "budget_cut_after": budget_cut(records[taken:], budget)}


def simulated_point(traces: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], programs: int, engine: Mapping[str, Any],
                    seeds: int) -> dict[str, Any]:
    """The same load on two simulated replicas, `seeds` arrival seeds: the mean attainment and
    share, and each seed's, so the spread shows."""
    model = engine_model({"engine": engine})
    shares, attainments, latencies, tokens, steps, full = [], [], [], [], [], []
    for seed in range(seeds):
        config = SimConfig(budget=settings["budget"], max_tokens=settings["max_tokens"], base_deadline_s=settings["deadline_s"],
                           replicas=2, balancer="agent-weighted", seed=seed)
        result = simulate("dynasor", traces, rate=settings["rate"], slo_scale=1, programs=programs, model=model, config=config)
        counts = Counter(o.replica for o in result.outcomes)
        shares.append([counts[i] / len(result.outcomes) for i in range(2)])
        attainments.append(result.summary.attainment)
        latencies += [r.latency_s for r in result.records]
        tokens += [r.tokens for r in result.records]
        steps += [r.steps for r in result.records]
        full += [r.steps >= settings["budget"] for r in result.records]
    return {"programs_per_seed": programs, "seeds": seeds, "engine_model": model.to_dict(),
            "attainment": statistics.fmean(attainments), "attainment_per_seed": attainments,
            "share": [statistics.fmean(s[i] for s in shares) for i in range(2)], "share_per_seed": shares,
            "share_in_range": sum(all(SHARE_RANGE[0] <= x <= SHARE_RANGE[1] for x in s) for s in shares) / seeds,
            "p50_latency_s": percentile(latencies, 50), "p90_latency_s": percentile(latencies, 90),
            "mean_tokens": statistics.fmean(tokens), "mean_steps": statistics.fmean(steps),
            "at_full_budget": statistics.fmean(full)}


def fleet_engine(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """engine.json as `slo_report.engine_model` reads a run's engine."""
    return {key: calibration[key] for key in ("points", "ttft_s", "prompt_chars")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", default="runs/fleet", help="where benchmarks.bench_fleet wrote fleet.json, engine.json and the records")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "fleet_agreement.json"))
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    fleet = json.loads((runs / "fleet.json").read_text())
    calibration = json.loads((runs / "engine.json").read_text())
    settings = fleet["settings"]
    records = {run["event"]: load_records(runs / f"{run['event']}.records.jsonl") for run in fleet["runs"]}
    traces = traces_from_records([r for rs in records.values() for r in rs], settings["max_tokens"])
    engine = fleet_engine(calibration)
    programs = round(settings["rate"] * settings["duration_s"] / 2)  # arrivals before the event, halfway
    sim = simulated_point(traces, settings, programs, engine, args.seeds)
    rows = []
    for run in fleet["runs"]:
        real = real_point(run, records[run["event"]], settings["budget"])
        rows.append({"real": real, "attainment_diff": sim["attainment"] - real["attainment"],
                     "within": abs(sim["attainment"] - real["attainment"]) <= AGREEMENT_POINTS,
                     "real_share_in_range": all(SHARE_RANGE[0] <= x <= SHARE_RANGE[1] for x in real["share"])})
    lengths = [s["tokens"] for t in traces for s in t["samples"]]
    out = {"hardware": fleet["hardware"], "calibration_hardware": calibration["hardware"], "machine": cpu_model(),
           "settings": settings, "engine": engine, "traces": {"questions": len(traces), "samples": len(lengths),
                                                             "mean_tokens": statistics.fmean(lengths),
                                                             "at_cap": sum(n >= settings["max_tokens"] for n in lengths) / len(lengths)},
           "simulated": sim, "runs": rows, "tolerance": AGREEMENT_POINTS, "share_range": SHARE_RANGE}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    m = sim["engine_model"]
    print(f"engine fitted on {len(engine['points'])} calibration levels: {m['fixed_s'] * 1e3:.1f} ms + {m['per_seq_s'] * 1e3:.2f} ms x batch "
          f"per step, prefill {m['prefill_s_per_token'] * 1e3:.2f} ms/token; traces: {len(traces)} questions, {len(lengths)} samples, "
          f"mean {out['traces']['mean_tokens']:.0f} tokens, {out['traces']['at_cap']:.0%} at the cap")
    print("| run | programs before the event | share r1 / r2 | SLO attainment | p50 / p90 latency, s | tokens per program | samples per program |")
    print("|---|---:|---|---:|---|---:|---:|")
    for row in rows:
        r = row["real"]
        print(f"| real, {r['event']} | {r['programs']} | {r['share'][0]:.0%} / {r['share'][1]:.0%} | {r['attainment']:.0%} | "
              f"{r['p50_latency_s']:.1f} / {r['p90_latency_s']:.1f} | {r['mean_tokens']:.0f} | {r['mean_steps']:.1f} |")
    print(f"| simulated, 2 replicas | {sim['programs_per_seed']} x {sim['seeds']} seeds | {sim['share'][0]:.0%} / {sim['share'][1]:.0%} "
          f"({sim['share_in_range']:.0%} of seeds within 35-65%) | {sim['attainment']:.0%} | {sim['p50_latency_s']:.1f} / "
          f"{sim['p90_latency_s']:.1f} | {sim['mean_tokens']:.0f} | {sim['mean_steps']:.1f} |")
    for row in rows:
        r = row["real"]
        print(f"real, {r['event']}: budget cut to the deadline for {r['budget_cut_before'][0]} of {r['budget_cut_before'][1]} programs "
              f"before the event, {r['budget_cut_after'][0]} of {r['budget_cut_after'][1]} after it")
    print(f"simulated: {sim['at_full_budget']:.0%} of programs ran their whole budget of {settings['budget']} samples")
    diffs = ", ".join(f"{row['real']['event']} {row['attainment_diff']:+.1%}" for row in rows)
    print(f"attainment, simulated - real: {diffs} (tolerance {AGREEMENT_POINTS:.0%})")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
