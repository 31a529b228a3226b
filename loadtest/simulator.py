"""Discrete-event load tests at GPU scale: the real ProgramRunner, Scheduler and SelfConsistency
programs (with a real allocation policy) run on virtual time (loadtest/virtual_loop.py) against
simulated engines (engines/simulated.py) that replay recorded traces, so a sweep of thousands of
programs over rates and SLO scales takes minutes on a laptop.

The workload is the Locust load test's (loadtest/locustfile.py): open-loop Poisson arrivals at
`rate` programs/s, questions drawn from the traces, deadline = slo_scale x base_deadline_s; each
program becomes a `ProgramRecord` and the summary is loadtest/slo.py's, as for the real runs.

Systems (`System`, switched on one at a time for the ablation):
- baseline: what a Triton+vLLM user does today: one request for `budget` samples at priority 0,
  voted in the client over the finished samples at completion or at the deadline (then aborted);
- gang: programs run by the runner in rounds, each program's requests at its scheduler priority
  (FCFS), no early stop (uniform allocation);
- gang+certaindex: the same with the certaindex allocation (the shipped calibration curve);
- dynasor: the same with SJF scheduling: the full system, as the server runs it;
- dynasor-nogang: dynasor with every request at priority 0 (the engine serves by arrival).

Finish-time fairness (`ProgramOutcome.ftf`) is latency under load over latency alone, where
latency alone is analytic: the engine model's time for the program's own requests (their full
recorded lengths, rounds one after another) on an idle engine. A program that never reached the
engine has none.

Several replicas: `replicas=k` runs k engine+runner pairs behind a balancer that sends each new
program to the replica with the fewest programs in flight (ties: round-robin); `agent-weighted`,
the fewest for its weight, the weight being what the replica's HAProxy agent check would answer
from its predicted backlog (serving/agent_check.py; HAProxy's weighted `leastconn` with the shipped
agent, the weight read at each pick where HAProxy reads it every second); round-robin; or, with
the `per-request` balancer, one runner and scheduler in front of k engines that take its
engine calls in turn (engines/round_robin.py): what a balancer blind to programs does, spreading
the samples of one program over replicas, where each call finds no prefix cached by the one before.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.policy_stream import SampleAccumulator
from engines.round_robin import RoundRobinEngine
from engines.simulated import EngineModel, SimulatedEngine, TraceSamples
from loadtest.equal_accuracy import last_at
from loadtest.slo import ClassSummary, Outcome, ProgramRecord, percentile, program_deadline, summarize
from loadtest.virtual_loop import run_virtual
from scheduler_backend.allocation import AllocationPolicy, UniformPolicy, load_policy
from scheduler_backend.capacity import ConcurrencyController
from scheduler_backend.engine import Engine, GenerateCall, SamplingSpec
from scheduler_backend.programs.self_consistency import SelfConsistency
from scheduler_backend.prompts import solve_messages
from scheduler_backend.quality import QualityFloor
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler
from scheduler_backend.traces import answer_correct, load_traces
from serving.agent_check import runner_weight
from serving.model_config import default_allocation


@dataclass(frozen=True)
class System:
    """One configuration under test. `runner` False is the baseline (no runner, no scheduler);
    the rest are the runner's switches."""

    name: str
    runner: bool = True
    gang: bool = True
    certaindex: bool = True  # the calibrated allocation; False: uniform (run every program to its budget)
    scheduling: str = "sjf"  # or "fcfs"


SYSTEMS: dict[str, System] = {s.name: s for s in (
    System("baseline", runner=False, gang=False, certaindex=False, scheduling="fcfs"),
    System("gang", certaindex=False, scheduling="fcfs"),
    System("gang+certaindex", scheduling="fcfs"),
    System("dynasor"),
    System("dynasor-nogang", gang=False),
)}


BALANCERS = ("least-loaded", "agent-weighted", "round-robin", "per-request")


@dataclass(frozen=True)
class SimConfig:
    """Everything but the system, the rate and the SLO scale."""

    budget: int = 16  # samples: dynasor's cap, the baseline's n
    round_size: int = 4
    max_tokens: int = 640  # the traces' own limit
    base_deadline_s: float = 30.0
    grace_s: float = 1e-6  # no response trip to allow for: only the rounding of virtual times
    replicas: int = 1
    balancer: str = "least-loaded"  # or "agent-weighted", "round-robin" (per program), or "per-request" (BALANCERS)
    agent_horizon_s: float = 30.0  # the agent-weighted balancer's horizon (dynasor's agent_horizon_s)
    max_running: int | None = None  # programs admitted per replica; None: "auto", as the server (capacity.py)
    probe_s: float = 1.0  # the server's deadline_probe_s
    seed: int = 0
    floor: QualityFloor = QualityFloor()  # dynasor's quality floor; records are judged against its units


@dataclass(frozen=True)
class ProgramOutcome:
    """One program's times, for finish-time fairness, and the replica the balancer sent it to."""

    pid: str
    arrival_s: float
    latency_s: float
    alone_s: float | None
    replica: int = 0

    @property
    def ftf(self) -> float | None:
        return self.latency_s / self.alone_s if self.alone_s else None


@dataclass
class SimResult:
    system: str
    rate: float
    slo_scale: float
    records: list[ProgramRecord]
    outcomes: list[ProgramOutcome]
    duration_s: float  # virtual: from the first arrival to the last finish
    wall_s: float
    prefill_s: float = 0.0  # engine time stalled for prefills, every engine together
    summary: ClassSummary = field(init=False)

    def __post_init__(self) -> None:
        self.summary = summarize(self.records, max(self.duration_s, 1e-9))[self.system]

    def row(self) -> dict[str, Any]:
        """The flat numbers of a sweep table and its JSON."""
        ftf = [f for o in self.outcomes if (f := o.ftf) is not None]
        return {"system": self.system, "rate": self.rate, "slo_scale": self.slo_scale, **asdict(self.summary),
                "ftf_p50": percentile(ftf, 50), "ftf_p90": percentile(ftf, 90), "ftf_p99": percentile(ftf, 99),
                "prefill_s_per_program": self.prefill_s / max(len(self.records), 1), "duration_s": self.duration_s,
                "wall_s": self.wall_s}


def arrivals(traces: Sequence[Mapping[str, Any]], rate: float, programs: int, seed: int) -> list[tuple[float, Mapping[str, Any]]]:
    """Poisson arrival times at `rate` programs/s and a question (trace) for each, seeded."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate: must be finite and > 0, got {rate!r}")
    rng = random.Random(seed)
    pool = [t for t in traces if t.get("samples")]
    if not pool:
        raise ValueError("traces: none has samples to replay")
    t, out = 0.0, []
    for _ in range(programs):
        t += rng.expovariate(rate)
        out.append((t, rng.choice(pool)))
    return out


@dataclass(eq=False)
class _Replica:
    """What the balancer sends a program to: a runner (None for the baseline) over `engine`, which
    is one of `engines` or, with the per-request balancer, all of them in turn."""

    engine: Engine
    engines: list[SimulatedEngine]
    runner: ProgramRunner | None
    live: int = 0


def _replicas(system: System, model: EngineModel, samples: TraceSamples, config: SimConfig) -> list[_Replica]:
    groups = [[SimulatedEngine(model, samples) for _ in range(config.replicas)]] if config.balancer == "per-request" else \
        [[SimulatedEngine(model, samples)] for _ in range(config.replicas)]
    out = []
    for engines in groups:
        engine: Engine = RoundRobinEngine(engines) if len(engines) > 1 else engines[0]
        runner = None
        if system.runner:
            # A runner in front of several engines admits what that many replicas' runners would
            # together: from their start (the controller's default, 16 programs each) to all their slots.
            concurrency = None
            if config.max_running:
                max_running = config.max_running * len(engines)
            else:
                concurrency = ConcurrencyController(initial_programs=16 * len(engines), max_seqs=model.max_num_seqs * len(engines))
                max_running = concurrency.max_running
            scheduler = Scheduler(max_running=max_running, policy=system.scheduling)
            runner = ProgramRunner(engine, scheduler, clock=asyncio.get_running_loop().time, progress_interval_s=None,
                                   inline_results=True, gang=system.gang, concurrency=concurrency, probe_s=config.probe_s)
        out.append(_Replica(engine, engines, runner))
    return out


def least_connections(live: Sequence[int], weights: Sequence[int] | None, i: int) -> int:
    """HAProxy's `leastconn`: the replica with the fewest streams for its weight, (live + 1) /
    weight (all weights equal without an agent); ties go round-robin by the program's number."""
    keys = [(n + 1) / w for n, w in zip(live, weights)] if weights else [float(n) for n in live]
    tied = [k for k, key in enumerate(keys) if key == min(keys)]
    return tied[i % len(tied)]


def _agent_weight(replica: _Replica, horizon_s: float) -> int:
    """What the replica's agent check would answer now (a baseline replica has no agent: 100)."""
    if replica.runner is None:
        return 100
    return runner_weight(replica.runner, horizon_s)


async def _baseline(engine: Engine, pid: str, question: str, deadline_s: float, config: SimConfig) -> tuple[Outcome, str]:
    call = GenerateCall(request_id=f"{pid}:all", messages=solve_messages(question),
                        sampling=SamplingSpec(n=config.budget, max_tokens=config.max_tokens, temperature=0.5, top_k=50))
    acc = SampleAccumulator()

    async def consume() -> None:
        async for deltas in engine.generate(call):
            acc.add(deltas)

    try:
        await asyncio.wait_for(consume(), deadline_s)
    except asyncio.TimeoutError:
        await engine.abort(call.request_id)
    return Outcome(acc.answer(), acc.tokens, True, "deadline" if acc.finished < config.budget else "finished", acc.finished), ""


async def _dynasor(runner: ProgramRunner, pid: str, question: str, deadline_s: float, policy: AllocationPolicy,
                   config: SimConfig) -> tuple[Outcome, str]:
    program = SelfConsistency(question, config.budget, policy, round_size=config.round_size,
                              first_round=getattr(policy, "detect_step", None),
                              sampling=SamplingSpec(max_tokens=config.max_tokens, temperature=0.7, top_k=50))
    refused = runner.floor_refusal(program, deadline_s, config.floor)  # as the server's door does
    if refused:
        return Outcome(None, 0, True, "refused", 0, 0), refused
    state = await runner.run(pid, program, deadline_s=deadline_s, floor=config.floor)
    reason = state.stop_reason.value if state.stop_reason else ""
    outcome = Outcome(state.answer, state.tokens_used, True, reason, state.steps, int(state.extra.get("probed", 0)))
    return outcome, str(state.extra.get("error", "") or state.extra.get("refusal", ""))


async def _simulate(system: System, arrival_list: list[tuple[float, Mapping[str, Any]]], deadline_s: float, model: EngineModel,
                    policy: AllocationPolicy, config: SimConfig, samples: TraceSamples,
                    bar: tqdm | None) -> tuple[list[ProgramRecord], list[ProgramOutcome], float, float]:
    loop = asyncio.get_running_loop()
    replicas = _replicas(system, model, samples, config)
    records: list[ProgramRecord] = []
    outcomes: list[ProgramOutcome] = []
    last = [0.0]

    def pick(i: int) -> _Replica:
        if config.balancer == "round-robin":
            return replicas[i % len(replicas)]
        weights = [_agent_weight(r, config.agent_horizon_s) for r in replicas] if config.balancer == "agent-weighted" else None
        return replicas[least_connections([r.live for r in replicas], weights, i)]

    async def one(i: int, at: float, trace: Mapping[str, Any]) -> None:
        await asyncio.sleep(at - loop.time())
        pid = f"p{i}"
        replica = pick(i)
        replica.live += 1
        start = loop.time()
        try:
            if replica.runner is None:
                outcome, error = await _baseline(replica.engine, pid, trace["question"], deadline_s, config)
            else:
                outcome, error = await _dynasor(replica.runner, pid, trace["question"], deadline_s, policy, config)
        finally:
            replica.live -= 1
        latency = loop.time() - start
        last[0] = max(last[0], loop.time())
        samples.forget(pid)
        alone = [e.alone_s.pop(pid) for e in replica.engines if pid in e.alone_s]
        for e in replica.engines:
            e.forget(pid)
        records.append(ProgramRecord(user_class=system.name, latency_s=latency, deadline_s=deadline_s, answer=outcome.answer,
                                     correct=answer_correct(trace, outcome.answer), tokens=outcome.tokens, error=error,
                                     grace_s=config.grace_s, question_id=str(trace.get("id", "")), stop_reason=outcome.stop_reason,
                                     steps=outcome.steps, probed=outcome.probed, floor=config.floor.units))
        outcomes.append(ProgramOutcome(pid, at, latency, sum(alone) if alone else None, replicas.index(replica)))
        if bar is not None:
            bar.update(1)

    try:
        await asyncio.gather(*(one(i, at, trace) for i, (at, trace) in enumerate(arrival_list)))
    finally:
        for r in replicas:
            r.engine.shutdown()
    first = arrival_list[0][0] if arrival_list else 0.0
    return records, outcomes, last[0] - first, sum(e.prefill_s for r in replicas for e in r.engines)


def simulate(system: System | str, traces: Sequence[Mapping[str, Any]], *, rate: float, slo_scale: float, programs: int,
             model: EngineModel, config: SimConfig = SimConfig(), policy: AllocationPolicy | None = None,
             progress: bool = False) -> SimResult:
    """One load test: `programs` Poisson arrivals at `rate`/s, deadline slo_scale x base_deadline_s."""
    system = SYSTEMS[system] if isinstance(system, str) else system
    if config.balancer not in BALANCERS or config.replicas < 1:
        raise ValueError(f"config: balancer must be one of {', '.join(BALANCERS)} and replicas >= 1, got {config}")
    deadline_s = program_deadline(slo_scale, config.base_deadline_s)
    program = str(traces[0].get("program", "self-consistency")) if traces else "self-consistency"
    chosen = (policy or default_allocation(program)[1]) if system.certaindex else UniformPolicy()
    arrival_list = arrivals(traces, rate, programs, config.seed)
    samples = TraceSamples(traces, config.seed)
    bar = tqdm(total=programs, desc=f"{system.name} rate={rate:g} slo={slo_scale:g}", unit="prog", leave=False) if progress else None
    t0 = time.perf_counter()
    try:
        records, outcomes, duration, prefill_s = run_virtual(_simulate(system, arrival_list, deadline_s, model, chosen, config,
                                                                       samples, bar))
    finally:
        if bar is not None:
            bar.close()
    return SimResult(system.name, rate, slo_scale, records, outcomes, duration, time.perf_counter() - t0, prefill_s)


def sweep(systems: Sequence[System | str], traces: Sequence[Mapping[str, Any]], *, rates: Sequence[float],
          slo_scales: Sequence[float], programs: int, model: EngineModel, config: SimConfig = SimConfig(),
          policy: AllocationPolicy | None = None, progress: bool = False, seeds: int = 1) -> list[dict[str, Any]]:
    """One row per system x rate x SLO scale (the same arrivals for every system): with several
    `seeds` (arrivals and sample orders from config.seed on), the mean of their `SimResult.row()`s,
    the programs summed and the spread of attainment as `attainment_sd`."""
    points = [(system, rate, scale) for system in systems for rate in rates for scale in slo_scales]
    rows = []
    for system, rate, scale in tqdm(points, desc="simulated points", unit="pt", disable=not progress or len(points) < 2):
        runs = [simulate(system, traces, rate=rate, slo_scale=scale, programs=programs, model=model,
                         config=replace(config, seed=config.seed + k), policy=policy, progress=progress).row()
                for k in range(seeds)]
        rows.append(_mean_row(runs))
    return rows


def _mean_row(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers averaged over the runs of one point (NaN, an empty percentile, left out), programs summed."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("rate", "slo_scale"):
            values = [r[key] for r in runs if r[key] == r[key]]
            out[key] = statistics.fmean(values) if values else math.nan
    out["programs"] = sum(r["programs"] for r in runs)
    out["attainment_sd"] = statistics.pstdev([r["attainment"] for r in runs])
    return out


def sustainable_rate(rows: Sequence[Mapping[str, Any]], system: str, slo_scale: float, target: float = 0.9) -> float | None:
    """The highest program rate at which `system` attains the SLO for `target` of its programs
    (interpolated; the highest rate tested when it never drops; None when even the lowest misses)."""
    points = sorted((r["rate"], r["attainment"]) for r in rows if r["system"] == system and r["slo_scale"] == slo_scale)
    return last_at(points, target)


def tightest_slo_scale(rows: Sequence[Mapping[str, Any]], system: str, rate: float, target: float = 0.9) -> float | None:
    """The smallest SLO scale at which `system` still attains `target` at `rate` (interpolated;
    the smallest tested when all attain it; None when even the loosest misses)."""
    points = sorted((-r["slo_scale"], r["attainment"]) for r in rows if r["system"] == system and r["rate"] == rate)
    crossing = last_at(points, target)
    return None if crossing is None else -crossing


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    header = (f"{'system':<16}{'rate/s':>8}{'slo':>6}{'progs':>7}{'SLO att.':>9}{'at floor':>9}{'goodput/s':>10}{'right/s':>8}"
              f"{'p50 s':>8}{'p99 s':>8}{'accuracy':>9}{'tokens':>8}{'ftf p50':>8}{'ftf p99':>8}{'wall s':>8}")
    out = [header]
    for r in rows:
        out.append(f"{r['system']:<16}{r['rate']:>8g}{r['slo_scale']:>6g}{r['programs']:>7}{r['attainment']:>9.1%}"
                   f"{r['attainment_at_floor']:>9.1%}{r['goodput_per_s']:>10.3f}{r['correct_goodput_per_s']:>8.3f}"
                   f"{r['p50_latency_s']:>8.2f}{r['p99_latency_s']:>8.2f}{r['accuracy']:>9.1%}{r['mean_tokens']:>8.0f}"
                   f"{r['ftf_p50']:>8.2f}{r['ftf_p99']:>8.2f}{r['wall_s']:>8.1f}")
    return "\n".join(out)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.simulator", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--traces", default="data/traces/gsm8k-test-sc16.jsonl")
    p.add_argument("--systems", default="dynasor,baseline", help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--rates", default="1,2,4", help="programs/s, comma-separated")
    p.add_argument("--slo-scales", default="1", help="comma-separated")
    p.add_argument("--programs", type=int, default=1000)
    p.add_argument("--engine", default="gpu", help="cpu, gpu, or a JSON file of EngineModel fields (or measured points)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--balancer", choices=BALANCERS, default="least-loaded",
                   help="per program (least-loaded, round-robin), or each engine call in turn over the replicas (per-request)")
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--round-size", type=int, default=4)
    p.add_argument("--base-deadline-s", type=float, default=30.0)
    p.add_argument("--max-running", type=int, default=None, help="programs admitted per replica (default: auto, from measured capacity, as the server)")
    p.add_argument("--policy", default=None, help="allocation policy file (default: the shipped calibration's curve)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floor", type=int, default=0, help="dynasor's quality floor in samples; records are judged at it")
    p.add_argument("--floor-action", choices=("degrade", "refuse"), default="degrade")
    p.add_argument("--target", type=float, default=0.9, help="SLO attainment for the sustainable rate and tightest SLO")
    p.add_argument("--output", default="runs/simulator.json")
    o = p.parse_args(argv)
    unknown = [s for s in o.systems.split(",") if s not in SYSTEMS]
    if unknown:
        p.error(f"--systems: unknown {unknown[0]!r}; choose from {', '.join(SYSTEMS)}")
    systems = o.systems.split(",")
    model = EngineModel.load(o.engine)
    config = SimConfig(budget=o.budget, round_size=o.round_size, base_deadline_s=o.base_deadline_s, replicas=o.replicas,
                       balancer=o.balancer, max_running=o.max_running, seed=o.seed,
                       floor=QualityFloor(o.floor, o.floor_action))
    policy = load_policy(o.policy, "curve") if o.policy else None
    traces = load_traces(o.traces)
    rates, scales = _floats(o.rates), _floats(o.slo_scales)
    rows = sweep(systems, traces, rates=rates, slo_scales=scales, programs=o.programs, model=model, config=config, policy=policy,
                 progress=True)
    print(format_rows(rows))
    for s in systems:
        for scale in scales:
            print(f"{s}: sustainable rate at SLO scale {scale:g}: {sustainable_rate(rows, s, scale, o.target)}")
        for rate in rates:
            print(f"{s}: tightest SLO scale at {rate:g}/s: {tightest_slo_scale(rows, s, rate, o.target)}")
    out = Path(o.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {**vars(o), "engine_model": model.to_dict(), "config": asdict(config)}, "rows": rows},
                              indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
