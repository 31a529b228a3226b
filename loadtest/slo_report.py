"""The SLO figures: real sweeps (benchmarks/bench_slo.py) next to the simulator calibrated from
them, then what only the simulator can draw at this machine's scale.

At a quality floor, per workload (code and math; `--floor-runs`): attainment counts only answers
that meet the floor; the real points against the simulator; the rate and SLO-scale sweeps; the
sustainable rate and tightest SLO at 90% attainment at the baseline's accuracy
(loadtest/equal_accuracy.py); the ablation (gang, + certaindex allocation, + SJF; Figure 10) and
finish-time fairness (Figure 14) held to the same floor; the replay bound on what allocation
alone can buy at equal accuracy.

Without a floor (the first math sweep, `--real`): the engine model fitted to that run, every real
point simulated again (|real - simulated| attainment <= 15 points), the simulated sweeps and
accuracy against attainment (Figure 9), the ratios, and the same sweep at GPU scale (an assumed
H100 engine, 1 and 4 replicas).

Writes docs/results/slo_*.png and docs/results/slo.md; prints every table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engines.simulated import PRESETS, EngineModel  # noqa: E402
from loadtest.equal_accuracy import Comparison, Limit, binomial_se, compare  # noqa: E402
from loadtest.simulator import SimConfig, simulate, sustainable_rate, sweep, tightest_slo_scale  # noqa: E402
from loadtest.slo import ProgramRecord, summarize  # noqa: E402
from scheduler_backend.datasets import is_correct, load  # noqa: E402
from scheduler_backend.quality import QualityFloor  # noqa: E402
from scheduler_backend.traces import load_traces  # noqa: E402
from scheduler_backend.tradeoffs import analyse, tokens_at  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AGREEMENT_POINTS = 0.15  # the tolerance on SLO attainment, real against simulated
TARGET = 0.9
ABLATION = ("baseline", "gang", "gang+certaindex", "dynasor")
REFERENCES = ("output length", "oracle")  # not certaindex policies: the oracle knows the gold answer
COLORS = {"baseline": "tab:red", "gang": "tab:orange", "gang+certaindex": "tab:olive", "dynasor": "tab:blue"}


def load_real(path: str | Path) -> dict[str, Any]:
    """A real run as written by bench_slo, with each point's programs still unanswered when Locust
    stopped waiting (deadline + grace + 5 s after the last arrival) counted as programs that missed
    their SLO: Locust's summary leaves them out, which would flatter an overloaded server."""
    real = json.loads(Path(path).read_text())
    for p in real["points"]:
        cut = p.get("unfinished", 0)
        if cut:
            total = p["programs"] + cut
            for key in ("attainment", "deadline_met", "accuracy", "attainment_at_floor"):
                if key in p:
                    p[key] = p[key] * p["programs"] / total
            p["programs"] = total
    return real


def engine_model(real: Mapping[str, Any]) -> EngineModel:
    """The CPU engine as measured in the real run: decode cost fitted to tokens/s per concurrency,
    prefill from the first-token time of one prompt (about 4 characters a token), max_num_seqs
    as the shipped policy's model.json."""
    e = real["engine"]
    prompt_tokens = max(e["prompt_chars"] // 4, 1)
    return EngineModel.fit([(p["sequences"], p["tokens_per_s"]) for p in e["points"]],
                           max_num_seqs=PRESETS["cpu"].max_num_seqs, prefill_s_per_token=e["ttft_s"] / prompt_tokens)


def ratio_line(name: str, rows: Sequence[Mapping[str, Any]], fixed: float, measure: Callable[..., float | None],
               higher_is_better: bool) -> tuple[str, float | None]:
    """'dynasor X, baseline Y: ratio R' for one measure; the ratio is dynasor's advantage (>1: better)."""
    d, b = measure(rows, "dynasor", fixed, TARGET), measure(rows, "baseline", fixed, TARGET)

    def show(v: float | None) -> str:
        return "below the range tested" if v is None else f"{v:.3g}"

    ratio = None
    if d is not None and b is not None and d > 0 and b > 0:
        ratio = d / b if higher_is_better else b / d
    return f"{name}: dynasor {show(d)}, baseline {show(b)}; " + ("ratio n/a" if ratio is None else f"dynasor/baseline {ratio:.2f}x"), ratio


def plot_sweep(ax: Any, rows: Sequence[Mapping[str, Any]], real: Sequence[Mapping[str, Any]], key: str, systems: Sequence[str]) -> None:
    for s in systems:
        sim = sorted((r[key], r["attainment"]) for r in rows if r["system"] == s)
        if sim:
            ax.plot(*zip(*sim), "-", color=COLORS.get(s), label=f"{s} (simulated)")
        pts = sorted((r[key], r["attainment"]) for r in real if r["system"] == s)
        if pts:
            ax.plot(*zip(*pts), "o", color=COLORS.get(s), label=f"{s} (real server)")
    ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("SLO attainment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def accuracy_matched(rows: Sequence[Mapping[str, Any]], key: str, fixed_key: str, fixed: float) -> str:
    """The same comparison with accuracy held: dynasor's best tested point (highest rate, or
    tightest scale) that attains 90% with accuracy at least the baseline's at the baseline's own
    best tested point that attains 90%."""
    higher = key == "rate"

    def best(system: str, floor: float = -1.0) -> Mapping[str, Any] | None:
        ok = [r for r in rows if r["system"] == system and r[fixed_key] == fixed and r["attainment"] >= TARGET and r["accuracy"] >= floor]
        return (max if higher else min)(ok, key=lambda r: r[key]) if ok else None

    base = best("baseline")
    if base is None:
        return "accuracy-matched: the baseline attains 90% at no tested point"
    dyn = best("dynasor", base["accuracy"])
    if dyn is None:
        return f"accuracy-matched: dynasor reaches the baseline's {base['accuracy']:.1%} at no point attaining 90%"
    ratio = dyn[key] / base[key] if higher else base[key] / dyn[key]
    return (f"accuracy-matched ({key}): baseline {base[key]:g} at accuracy {base['accuracy']:.1%}; dynasor {dyn[key]:g} at "
            f"{dyn['accuracy']:.1%}: {ratio:.2f}x")


def at_90(rows: Sequence[Mapping[str, Any]], system: str, slo_scale: float) -> str:
    """The sustainable rate in words (a floor when never missed in the range), with the accuracy
    of the fastest tested rate that still attains 90%."""
    own = sorted((r for r in rows if r["system"] == system and r["slo_scale"] == slo_scale), key=lambda r: r["rate"])
    rate = sustainable_rate(rows, system, slo_scale, TARGET)
    if rate is None:
        return f"{system}: below 90% at every rate tested"
    fastest = max((r for r in own if r["attainment"] >= TARGET), key=lambda r: r["rate"])
    floor = "at least " if rate >= own[-1]["rate"] else ""
    return (f"{system}: sustainable {floor}{rate:.3g} programs/s (at {fastest['rate']:g}/s: attainment "
            f"{fastest['attainment']:.0%}, accuracy {fastest['accuracy']:.1%}, {fastest['mean_tokens']:,.0f} tokens per program)")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    rule = "|" + "|".join("---:" if c[2] else "---" for c in columns) + "|"
    body = ["| " + " | ".join(format(r[c[1]], c[2]) if c[2] else str(r[c[1]]) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def equal_accuracy_bound(traces: Sequence[dict[str, Any]], budget: int) -> tuple[list[str], float | None]:
    """What any allocation could give at the baseline's accuracy, from replay: the tokens per
    program each policy needs to reach the accuracy of `budget` samples (the baseline's fixed n),
    and how many times fewer that is than what those samples cost. The engine's tokens per second
    are the same under both systems, so at equal accuracy that factor is about the most the
    sustainable rate can gain from allocation; scheduling only decides whose tokens run first.
    Every sample is a consult (the most generous schedule: a policy may stop after any sample).
    Returns the lines and the best factor a certaindex policy reaches (None: none reaches the
    accuracy)."""
    analysis = analyse(traces, on="all", round_size=1, budget=budget)
    fixed = next(p for p in next(s for s in analysis.sweeps if s.name == "uniform").points if p.knob == budget)
    lines = [f"Replayed on the {analysis.questions} traced questions ({analysis.orderings} sample orderings, a policy "
             f"consulted after every sample from the {analysis.detect_step}th): tokens per program each policy needs to reach "
             f"the accuracy of {budget} samples ({fixed.accuracy:.1%}, {fixed.tokens:,.0f} tokens).", "",
             "| policy | tokens per program | fewer than the baseline's (x) |", "|---|---:|---:|"]
    best = None
    for curve in analysis.sweeps:
        if curve.name == "uniform":
            continue
        tokens = tokens_at(curve.points, fixed.accuracy)
        factor = fixed.tokens / tokens if tokens else None
        if factor is not None and curve.name not in REFERENCES:
            best = max(best or 0.0, factor)
        lines.append(f"| {curve.name} | {'never' if tokens is None else f'{tokens:,.0f}'} | "
                     f"{'-' if factor is None else f'{factor:.2f}'} |")
    return lines, best


TRACES = {"math": "gsm8k-test-sc16.jsonl", "code": "humaneval-test-code16.jsonl"}
FLOOR_SCALES = (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4)


def regrade(out: Path) -> None:
    """Grade the code answers of a run's points again, at rest, and recompute their summaries from
    the records: runs made before the load test graded at test stop had hidden tests time out on
    the loaded machine and count right answers as wrong."""
    result = json.loads(out.read_text())
    problems = {p.id: p for p in load({"math": "gsm8k", "code": "humaneval"}[result["settings"]["workload"]], "test")}
    for point in result["points"]:
        path = out.parent / f"{result['settings']['workload']}-{point['system']}-r{point['rate']:g}-s{point['slo_scale']:g}.records.jsonl"
        records = [ProgramRecord(**json.loads(line)) for line in path.read_text().splitlines()]
        graded = [replace(r, correct=is_correct(problems[r.question_id], r.answer)) for r in records]
        changed = sum(a.correct != b.correct for a, b in zip(records, graded))
        path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in graded))
        point.update(asdict(summarize(graded, point["duration_s"])[next(iter({r.user_class for r in graded}))]))
        print(f"{path.name}: {changed} of {len(graded)} regraded; accuracy now {point['accuracy']:.1%}", flush=True)
    out.write_text(json.dumps(result, indent=1))


def show_limit(limit: Limit, along: str) -> str:
    """A limit in words: the rate or SLO scale, the accuracy there and what bounds it."""
    if limit.value is None:
        return f"none (misses at the easiest point tested, by {limit.bound_by})"
    unit = "programs/s" if along == "rate" else "x the base deadline"
    end = "at least " if limit.bound_by == "range" else ""
    return f"{end}{limit.value:.3g} {unit} (accuracy there {limit.accuracy:.1%}, bound by {limit.bound_by})"


def comparison_line(c: Comparison) -> str:
    """One sweep's equal-accuracy comparison in words."""
    what, held = ("sustainable rate", "SLO scale") if c.along == "rate" else ("tightest SLO scale", "programs/s")
    ratio = "n/a" if c.ratio is None else f"**{c.ratio:.2f}x**"
    held_to = ("n/a (the baseline has no limit to take an accuracy from)" if c.baseline.value is None else
               f"(within {c.tolerance:.1%}, one s.e. of the difference) {show_limit(c.dynasor, c.along)}")
    return (f"{what} at {held} {c.fixed:g}: baseline {show_limit(c.baseline, c.along)}; dynasor at the baseline's accuracy "
            f"{held_to}; dynasor at any accuracy {show_limit(c.dynasor_any_accuracy, c.along)}. "
            f"At equal accuracy, dynasor/baseline {ratio}")


def floor_section(path: str | Path, out: Path, programs: int, seeds: int) -> tuple[list[str], dict[str, Any]]:
    """One workload's SLO results at a quality floor and equal accuracy (issue: deadlines that keep
    the answer's quality): the real points beside the simulator on the engine they measured, the
    simulated rate and SLO-scale sweeps (`programs` x `seeds` arrivals per point), the equal-accuracy
    limits, the ablation and finish-time fairness held to the same floor, and the replay bound."""
    real = load_real(path)
    s = real["settings"]
    workload = s["workload"]
    traces = load_traces(ROOT / "data" / "traces" / TRACES[workload])[: s["questions"]]
    model = engine_model(real)
    floor = QualityFloor(s["floor"], s["floor_action"])
    config = SimConfig(budget=s["budget"], max_tokens=s["max_tokens"], base_deadline_s=s["base_deadline_s"], floor=floor)
    title = {"math": "Math (GSM8K, self-consistency)", "code": "Code (HumanEval, the `code` program)"}[workload]
    md = [f"## {title}: SLOs at a quality floor of {floor.units} samples, at equal accuracy", "",
          f"Real server: {real['hardware']}; Qwen2.5-Coder-0.5B, project defaults; the first {s['questions']} test problems; "
          f"budget {s['budget']} samples of at most {s['max_tokens']} tokens (the baseline's n); deadline = SLO scale x "
          f"{s['base_deadline_s']:g} s; floor {floor.units} samples, `floor_action` {floor.action} (the baseline's answers are "
          f"judged at the same floor); {s['programs']} programs per real point. Engine fitted to that run: "
          f"{model.tokens_per_s(8):.0f} tok/s at 8 sequences, {model.tokens_per_s(64):.0f} at 64. Reproduce: "
          f"`python -m benchmarks.bench_slo --workload {workload} --floor {floor.units} --programs {s['programs']} "
          f"--systems SYSTEM --rates RATES --slo-scales {s['rate_sweep_scale']:g} --out {path}` per system and rates of the table "
          f"below, then `python -m loadtest.slo_report` (`make bench-slo-floor` runs it all).", ""]
    agreement = []
    for p in tqdm(real["points"], desc=f"{workload}: simulating the real points", unit="pt"):
        sim = sweep([p["system"]], traces, rates=[p["rate"]], slo_scales=[p["slo_scale"]], programs=p["programs"], model=model,
                    config=config, seeds=seeds)[0]
        agreement.append({"system": p["system"], "rate": p["rate"], "slo_scale": p["slo_scale"], "programs": p["programs"],
                          "real": p["attainment_at_floor"], "simulated": sim["attainment_at_floor"],
                          "diff": sim["attainment_at_floor"] - p["attainment_at_floor"],
                          "real_accuracy": f"{p['accuracy']:.1%} ± {binomial_se(p['accuracy'], p['programs']):.1%}",
                          "sim_accuracy": sim["accuracy"], "correct_per_s": p["correct_goodput_per_s"],
                          "below_floor": p.get("below_floor", 0), "tokens": p["mean_tokens"]})
    within = sum(abs(a["diff"]) <= AGREEMENT_POINTS for a in agreement)
    md += ["### Real points, and the simulator on them", "",
           f"{within} of {len(agreement)} points within {AGREEMENT_POINTS * 100:.0f} points of SLO attainment at the floor "
           f"(simulated: {seeds} seeds of the same arrivals per point). Accuracy: right answers over every program that "
           "arrived (refused and late ones are not right), ± one binomial standard error.", "",
           markdown_table(agreement, [("system", "system", ""), ("rate/s", "rate", "g"), ("SLO scale", "slo_scale", "g"),
                                      ("programs", "programs", "d"), ("at floor, real", "real", ".1%"),
                                      ("simulated", "simulated", ".1%"), ("difference", "diff", "+.1%"),
                                      ("accuracy, real", "real_accuracy", ""), ("simulated", "sim_accuracy", ".1%"),
                                      ("right answers/s", "correct_per_s", ".3f"), ("answered below floor", "below_floor", "d"),
                                      ("tokens", "tokens", ",.0f")]), ""]

    rate_scale, scale_rate = s["rate_sweep_scale"], s["scale_sweep_rate"]
    top = max(p["rate"] for p in real["points"]) * 1.5
    rates = sorted({round(top * k / 15, 4) for k in range(1, 16)} | {p["rate"] for p in real["points"]})
    both = ["dynasor", "baseline"]
    sim_rate = sweep(ABLATION, traces, rates=rates, slo_scales=[rate_scale], programs=programs, model=model, config=config,
                     seeds=seeds, progress=True)
    sim_scale = sweep(both, traces, rates=[scale_rate], slo_scales=sorted(set(FLOOR_SCALES) | {rate_scale}), programs=programs,
                      model=model, config=config, seeds=seeds, progress=True)
    by_rate, by_scale = compare(sim_rate, "rate", rate_scale), compare(sim_scale, "slo_scale", scale_rate)
    se = max(binomial_se(r["accuracy"], r["programs"]) for r in sim_rate + sim_scale)
    real_rate = [p for p in real["points"] if p["slo_scale"] == rate_scale]
    by_real = compare(real_rate, "rate", rate_scale) if {p["system"] for p in real_rate} >= set(both) else None
    md += ["### At equal accuracy", "",
           f"Simulated (checked above): each point {programs} programs x {seeds} seeds (accuracy's binomial standard error at "
           f"most {se:.1%}; the traced problems are {len(traces)}).", "",
           f"- {comparison_line(by_rate)}", f"- {comparison_line(by_scale)}", "",
           "From the real points alone (read linearly between the rates measured; a limit below the lowest rate measured "
           "is none):", "", f"- {'n/a: both systems were not measured at the same SLO scale' if by_real is None else comparison_line(by_real)}",
           ""]
    bound, best = equal_accuracy_bound(traces, s["budget"])
    md += [f"Replay bound: {bound[0]}", "", *bound[1:], "",
           f"Allocation alone can buy at most {'nothing' if best is None else f'{best:.2f}x'} at the baseline's unloaded "
           "accuracy; more than that at a loaded point comes from scheduling (gang, SJF, refusing what cannot meet the floor), "
           "since the baseline's own accuracy there is lower than unloaded.", ""]

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for name in ABLATION:
        own = sorted((r["rate"], r["attainment_at_floor"], r["accuracy"]) for r in sim_rate if r["system"] == name)
        style = "-" if name in both else "--"
        axes[0].plot([o[0] for o in own], [o[1] for o in own], style, color=COLORS[name], label=f"{name} (simulated)")
        axes[1].plot([o[0] for o in own], [o[2] for o in own], style, color=COLORS[name], label=f"{name} (simulated)")
    for name in both:
        pts = sorted((p["rate"], p["attainment_at_floor"], p["accuracy"], binomial_se(p["accuracy"], p["programs"]))
                     for p in real["points"] if p["system"] == name and p["slo_scale"] == rate_scale)
        if pts:
            axes[0].plot([q[0] for q in pts], [q[1] for q in pts], "o", color=COLORS[name], label=f"{name} (real)")
            axes[1].errorbar([q[0] for q in pts], [q[2] for q in pts], yerr=[q[3] for q in pts], fmt="o", color=COLORS[name],
                             label=f"{name} (real, ± s.e.)")
        scale_curve = sorted((r["slo_scale"], r["attainment_at_floor"]) for r in sim_scale if r["system"] == name)
        axes[2].plot(*zip(*scale_curve), "-", color=COLORS[name], label=f"{name} (simulated)")
    if by_rate.baseline.accuracy is not None:
        axes[1].axhline(by_rate.baseline.accuracy, color="grey", lw=0.8, ls=":", label="baseline's accuracy at its limit")
    for ax, xlabel, ylabel in ((axes[0], f"programs/s (SLO scale {rate_scale:g})", "SLO attainment at the floor"),
                               (axes[1], f"programs/s (SLO scale {rate_scale:g})", "accuracy (all programs)"),
                               (axes[2], f"SLO scale ({scale_rate:g} programs/s)", "SLO attainment at the floor")):
        if ylabel.startswith("SLO"):
            ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    ablation = []
    for name in ABLATION[1:]:
        c = compare(sim_rate, "rate", rate_scale, system=name)
        ratio = "n/a" if c.ratio is None else f"{c.ratio:.2f}x"
        ablation.append(f"| {name} | {show_limit(c.dynasor, 'rate')} | {ratio} | {show_limit(c.dynasor_any_accuracy, 'rate')} |")
    md += ["### Ablation at the floor (Figure 10, simulated): each component held to the baseline's accuracy", "",
           f"The baseline: sustainable {show_limit(by_rate.baseline, 'rate')} at SLO scale {rate_scale:g}.", "",
           "| system | sustainable rate at the baseline's accuracy | over the baseline | at any accuracy |", "|---|---|---:|---|",
           *ablation, ""]

    loaded = by_rate.baseline.value or rates[len(rates) // 2]
    ftf_lines = []
    for name in ("baseline", "gang", "dynasor"):
        result = simulate(name, traces, rate=loaded, slo_scale=rate_scale, programs=programs * 2, model=model, config=config)
        ftf = sorted(f for o in result.outcomes if (f := o.ftf) is not None)
        if ftf:
            axes[3].plot(ftf, [(i + 1) / len(ftf) for i in range(len(ftf))], color=COLORS[name], label=name)
            ftf_lines.append(f"- {name}: p50 {ftf[len(ftf) // 2]:.2f}, p90 {ftf[int(len(ftf) * 0.9)]:.2f}, max {ftf[-1]:.2f} "
                             f"({len(ftf)} programs; attainment at the floor {result.summary.attainment_at_floor:.1%}, "
                             f"accuracy {result.summary.accuracy:.1%})")
    axes[3].set_xlabel(f"finish-time fairness at {loaded:.3g} programs/s")
    axes[3].set_ylabel("fraction of programs")
    axes[3].set_xscale("log")
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.suptitle(f"{title}, floor {floor.units} samples ({floor.action}); CPU: {real['hardware']}", fontsize=9)
    fig.tight_layout()
    image = f"slo_floor_{workload}.png"
    fig.savefig(out / image, dpi=110)
    plt.close(fig)
    md += [f"### Finish-time fairness at the floor (Figure 14, simulated, {loaded:.3g} programs/s: the baseline's limit)", "",
           *ftf_lines, "", f"![{workload} at the floor]({image})", ""]
    print("\n".join(md), flush=True)
    data = {"workload": workload, "agreement": agreement, "simulated_rate": sim_rate, "simulated_scale": sim_scale,
            "ratio_rate": by_rate.ratio, "ratio_slo": by_scale.ratio, "ratio_rate_real": by_real.ratio if by_real else None,
            "replay_bound": best}
    return md, data


POINT_COLUMNS = [("system", "system", ""), ("rate/s", "rate", "g"), ("SLO scale", "slo_scale", "g"), ("programs", "programs", "d"),
                 ("SLO attainment", "attainment", ".1%"), ("accuracy", "accuracy", ".1%"), ("tokens", "mean_tokens", ",.0f"),
                 ("p50 s", "p50_latency_s", ".1f"), ("p90 s", "p90_latency_s", ".1f")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--real", default="runs/slo/real.json", help="what benchmarks.bench_slo wrote")
    ap.add_argument("--traces", default=str(ROOT / "data" / "traces" / "gsm8k-test-sc16.jsonl"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--seeds", type=int, default=5, help="simulations per point (mean)")
    ap.add_argument("--programs", type=int, default=150, help="programs per simulated curve point")
    ap.add_argument("--gpu-programs", type=int, default=2000, help="programs per GPU-scale point")
    ap.add_argument("--floor-runs", default="runs/slo/code.json,runs/slo/math.json",
                    help="bench_slo runs at a quality floor (--floor), one per workload: the equal-accuracy sections")
    ap.add_argument("--floor-programs", type=int, default=300, help="programs per simulated point of the floor sections (x --seeds)")
    ap.add_argument("--regrade", action="store_true",
                    help="first grade the floor runs' answers again at rest (runs from before Locust graded code at test stop)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.regrade:
        for path in [x for x in args.floor_runs.split(",") if x]:
            regrade(Path(path))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    floor_md: list[str] = []
    floor_data = []
    for path in [x for x in args.floor_runs.split(",") if x]:
        lines, data = floor_section(path, out, args.floor_programs, args.seeds)
        floor_md += lines
        floor_data.append(data)
        # kept with the figures: the simulator's agreement test replays these points too
        (out / f"slo_floor_{data['workload']}_real.json").write_text(Path(path).read_text())
    real = load_real(args.real)
    s = real["settings"]
    traces = [t for t in load_traces(args.traces)][: s["questions"]]
    model = engine_model(real)
    config = SimConfig(budget=s["budget"], max_tokens=s["max_tokens"], base_deadline_s=s["base_deadline_s"])
    md = [f"<!-- generated by loadtest/slo_report.py from {args.floor_runs} and {args.real}; do not edit -->", "",
          *floor_md, "## Math without a floor: the first sweep (attainment counts any answer in time)", "",
          f"Real server: {real['hardware']}; Qwen2.5-Coder-0.5B, project defaults; GSM8K test questions (first {s['questions']}); "
          f"self-consistency, {s['budget']} samples of at most {s['max_tokens']} tokens; deadline = SLO scale x {s['base_deadline_s']:g} s; "
          f"{s['duration_s']:g} s of Poisson arrivals per point, one Locust run per point and system.", "",
          f"Engine model fitted to the real run's `policy` throughput: {model.fixed_s * 1e3:.1f} ms + {model.per_seq_s * 1e3:.2f} ms x batch "
          f"per decode step ({model.tokens_per_s(8):.0f} tok/s at 8 sequences, {model.tokens_per_s(64):.0f} at 64), prefill "
          f"{model.prefill_s_per_token * 1e3:.2f} ms/token, max_num_seqs {model.max_num_seqs}.", ""]
    print(f"engine model: {model}", flush=True)

    # 2. agreement
    agreement = []
    for p in tqdm(real["points"], desc="simulating the real points", unit="pt"):
        programs = max(round(p["rate"] * s["duration_s"]), 3)
        sim = sweep([p["system"]], traces, rates=[p["rate"]], slo_scales=[p["slo_scale"]], programs=programs, model=model,
                    config=config, seeds=args.seeds)[0]
        agreement.append({"system": p["system"], "rate": p["rate"], "slo_scale": p["slo_scale"], "programs": p["programs"],
                          "real": p["attainment"], "simulated": sim["attainment"], "sim_sd": sim["attainment_sd"],
                          "diff": sim["attainment"] - p["attainment"], "real_accuracy": p["accuracy"], "sim_accuracy": sim["accuracy"]})
    within = sum(abs(a["diff"]) <= AGREEMENT_POINTS for a in agreement)
    md += ["### Simulator against the real server", "",
           f"{within} of {len(agreement)} points within {AGREEMENT_POINTS * 100:.0f} points of SLO attainment "
           f"(simulated: mean of {args.seeds} seeds, same arrivals per point).", "",
           markdown_table(agreement, [("system", "system", ""), ("rate/s", "rate", "g"), ("SLO scale", "slo_scale", "g"),
                                      ("programs (real)", "programs", "d"), ("attainment real", "real", ".1%"),
                                      ("simulated", "simulated", ".1%"), ("sim s.d.", "sim_sd", ".1%"), ("difference", "diff", "+.1%"),
                                      ("accuracy real", "real_accuracy", ".1%"), ("simulated", "sim_accuracy", ".1%")]), ""]
    print("\n".join(md[-5:]), flush=True)

    # 3. simulated curves on this engine
    rate_scale, scale_rate = s["rate_sweep_scale"], s["scale_sweep_rate"]
    real_rate = [p for p in real["points"] if p["slo_scale"] == rate_scale]
    real_scale = [p for p in real["points"] if p["rate"] == scale_rate]
    top = max(p["rate"] for p in real_rate) * 1.2
    rates = sorted({round(top * k / 12, 4) for k in range(1, 13)} | {p["rate"] for p in real_rate})
    scales = sorted({0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6} | {p["slo_scale"] for p in real_scale})
    both = ["dynasor", "baseline"]
    sim_rate = sweep(both, traces, rates=rates, slo_scales=[rate_scale], programs=args.programs, model=model, config=config, progress=True)
    sim_scale = sweep(both, traces, rates=[scale_rate], slo_scales=scales, programs=args.programs, model=model, config=config, progress=True)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    plot_sweep(axes[0], sim_rate, real_rate, "rate", ["dynasor", "baseline"])
    axes[0].set_xlabel(f"programs per second (SLO scale {rate_scale:g})")
    plot_sweep(axes[1], sim_scale, real_scale, "slo_scale", ["dynasor", "baseline"])
    axes[1].set_xlabel(f"SLO scale (x {s['base_deadline_s']:g} s; {scale_rate:g} programs/s)")
    for sys_name in ("dynasor", "baseline"):
        pts = sorted((r["attainment"], r["accuracy"]) for r in sim_rate + sim_scale if r["system"] == sys_name)
        axes[2].plot(*zip(*pts), ".", color=COLORS[sys_name], label=f"{sys_name} (simulated)")
        rp = [(r["attainment"], r["accuracy"]) for r in real["points"] if r["system"] == sys_name]
        if rp:
            axes[2].plot(*zip(*rp), "o", mfc="none", color=COLORS[sys_name], label=f"{sys_name} (real server)")
    axes[2].set_xlabel("SLO attainment")
    axes[2].set_ylabel("accuracy (all programs)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"SLO attainment, dynasor vs baseline (CPU: {real['hardware']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "slo_sweeps.png", dpi=110)
    plt.close(fig)

    lines = ["### Ratios (dynasor over baseline, at 90% SLO attainment)", ""]
    summary: dict[str, float | None] = {}
    for label, rows in (("real server", real["points"]), ("simulated", sim_rate + sim_scale)):
        text, r1 = ratio_line(f"{label}, sustainable programs/s at SLO scale {rate_scale:g}", rows, rate_scale, sustainable_rate, True)
        text2, r2 = ratio_line(f"{label}, tightest SLO scale at {scale_rate:g} programs/s", rows, scale_rate, tightest_slo_scale, False)
        summary[f"{label} rate"], summary[f"{label} slo"] = r1, r2
        lines += [f"- {text}", f"- {text2}",
                  f"- {label}, {accuracy_matched(rows, 'rate', 'slo_scale', rate_scale)}",
                  f"- {label}, {accuracy_matched(rows, 'slo_scale', 'rate', scale_rate)}"]
    acc = {name: statistics.fmean([r["accuracy"] for r in real["points"] if r["system"] == name] or [float("nan")])
           for name in ("dynasor", "baseline")}
    lines += [f"- accuracy over every real point: dynasor {acc['dynasor']:.1%}, baseline {acc['baseline']:.1%}", ""]
    bound, best = equal_accuracy_bound(traces, s["budget"])
    lines += ["### How much rate allocation can buy at equal accuracy", "", *bound, "",
              f"The best certaindex policy needs {'no fewer' if best is None else f'{best:.2f}x fewer'} tokens per program "
              "at the baseline's accuracy, so at equal accuracy its sustainable rate can be about that much higher and no "
              "more; the oracle's row is the limit no policy that does not know the answer reaches.", ""]
    ordered = sorted(real["points"], key=lambda p: (p["system"], p["slo_scale"], p["rate"]))
    md += lines + ["![SLO sweeps](slo_sweeps.png)", "", "Real points:", "", markdown_table(ordered, POINT_COLUMNS), ""]
    print("\n".join(lines), flush=True)

    # GPU scale
    gpu = PRESETS["gpu"]
    gpu_rates = [2, 4, 6, 8, 12, 16, 24, 32, 48]
    gpu_rows = []
    for replicas in (1, 4):
        cfg = replace(config, replicas=replicas, base_deadline_s=config.base_deadline_s)
        for name in ("dynasor", "baseline"):
            for r in tqdm([x * replicas for x in gpu_rates], desc=f"GPU x{replicas} {name}", unit="pt"):
                row = simulate(name, traces, rate=r, slo_scale=rate_scale, programs=args.gpu_programs, model=gpu, config=cfg).row()
                gpu_rows.append({**row, "replicas": replicas})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    gpu_lines = []
    for replicas, style in ((1, "-"), (4, "--")):
        for name in ("dynasor", "baseline"):
            pts = sorted((r["rate"], r["attainment"]) for r in gpu_rows if r["system"] == name and r["replicas"] == replicas)
            ax.plot(*zip(*pts), style, marker=".", color=COLORS[name], label=f"{name}, {replicas} replica(s)")
            gpu_lines.append(f"- {replicas} replica(s), {at_90([r for r in gpu_rows if r['replicas'] == replicas], name, rate_scale)}")
    ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("programs per second")
    ax.set_ylabel("SLO attainment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"GPU scale (assumed H100 engine, 8B model), {args.gpu_programs} programs per point", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "slo_gpu.png", dpi=110)
    plt.close(fig)
    md += ["### GPU scale (simulated; the engine is an assumption, engines/simulated.py PRESETS['gpu'])", "", *gpu_lines, "",
           "![GPU scale](slo_gpu.png)", ""]
    print("\n".join(gpu_lines), flush=True)

    (out / "slo.md").write_text("\n".join(md) + "\n")
    # The real run is kept with its figures: the simulator's agreement test replays its points.
    Path(out / "slo_real.json").write_text(Path(args.real).read_text())
    (out / "slo.json").write_text(json.dumps({"agreement": agreement, "simulated_rate": sim_rate, "simulated_scale": sim_scale,
                                              "gpu": gpu_rows, "ratios": summary, "floor": floor_data}, indent=1))
    print(f"wrote {out / 'slo.md'} and 4 plots in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
