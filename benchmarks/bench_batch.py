"""`make bench-batch`: every allocation plot (docs/results/*.png) and table (printed, and
docs/results/batch.md, a markdown fragment) regenerated from the committed traces
(data/traces/*.jsonl), in well under a minute and with no engine: each policy is replayed on the
traces' eval split (scheduler_backend/tradeoffs.py), its curves fitted on the fit split.

For self-consistency on GSM8K and the code program on HumanEval it prints the headlines: the tokens
each policy needs to reach uniform's best accuracy, as ratios to uniform and to the oracle (the
Dynasor paper's Table 4).
Then the server's default allocation for each program (config.pbtxt `default_allocation`) on the
questions it was not fitted on, at budgets 8 and 16: tokens against the uniform budget and
questions lost, on the same samples (scheduler_backend/tradeoffs.py `transfer`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from client.replay import plot, report
from scheduler_backend.calibrate import describe
from scheduler_backend.certaindex_correlation import CertaindexCorrelation, certaindex_correlation
from scheduler_backend.registry import defaults
from scheduler_backend.replay import ORDERINGS, SAMPLE_VOTERS, build_table, capped
from scheduler_backend.traces import load_traces, split_of
from scheduler_backend.tradeoffs import NEAR, Analysis, Reach, Transfer, analyse, format_reach, transfer
from serving.model_config import default_allocation

ROOT = Path(__file__).resolve().parents[1]
HEADLINES = (("gsm8k", "self-consistency"), ("humaneval", "code"))  # (trace file prefix, program) of the printed headlines
# Traces keep every sample, so self-consistency replays in the rounds a server runs by default,
# whatever rounds the recording used.
SERVER_ROUND = int(defaults("self-consistency")["round_size"])
TRANSFER_BUDGETS = (8, 16)  # budgets a request may name, at which the default allocations are replayed


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _tokens(r: Reach) -> str:
    return "never" if r.tokens is None else f"{r.tokens:,.0f}"


def markdown(name: str, analysis: Analysis, image: str) -> str:
    """One trace file's section of batch.md."""
    c = analysis.calibration
    fitted = [describe(c.threshold)] + ([describe(c.curve)] if c.curve is not None else [])
    rounds = f", first round {analysis.detect_step} then rounds of {analysis.round_size}" if analysis.round_size else ""
    lines = [f"### {name}: {analysis.program}, {analysis.split} split ({analysis.questions} questions x {analysis.orderings} orderings{rounds})",
             "", f"![{name}]({image})", "", "Fitted on the fit split: " + "; ".join(f"`{f}`" for f in fitted) + ".", ""]
    lines += [f"Note: {note}" for note in c.notes] + ([""] if c.notes else [])
    lines += [f"| policy | tokens per question at accuracy {analysis.target:.3f} (uniform's best) | x uniform | x oracle "
              f"| tokens at {analysis.target - NEAR:.3f} | x uniform | x oracle | best accuracy |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r, n in zip(analysis.reach, analysis.near):
        lines.append(f"| {r.name} | {_tokens(r)} | {_ratio(r.vs_uniform)} | {_ratio(r.vs_oracle)} "
                     f"| {_tokens(n)} | {_ratio(n.vs_uniform)} | {_ratio(n.vs_oracle)} | {r.best_accuracy:.3f} |")
    return "\n".join(lines)


def transfer_markdown(rows: list[tuple[str, str, int, Transfer]]) -> str:
    """The default allocations on held-out questions at the budgets a request may name, as a batch.md section."""
    lines = ["### The default allocations on questions they were not fitted on, at budgets 8 and 16", "",
             "Each program's shipped calibration (config.pbtxt `default_allocation`) replayed on the eval half of the set "
             "it was fitted on and on every question of the other sets, capped at the request's budget, against the "
             "uniform budget on the same samples (a question is lost when the cap's answer was right and the allocation's, "
             "from a prefix of the same samples, is not); means over the orderings, worst ordering in brackets.", "",
             "| traces | default | budget | questions | tokens x uniform | lost per 16 | gained per 16 | accuracy uniform | accuracy default |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, spec, budget, t in rows:
        lines.append(f"| {name} | `{spec}` | {budget} | {t.questions} | {t.tokens_ratio:.2f} ({t.tokens_ratio_max:.2f}) "
                     f"| {t.lost_per_16:.2f} ({t.lost_per_16_max:.2f}) | {t.gained_per_16:.2f} | {t.accuracy_uniform:.3f} "
                     f"| {t.accuracy_policy:.3f} |")
    return "\n".join(lines)


def default_transfers(name: str, program: str, traces: list[dict], orderings: int, round_size: int | None
                      ) -> list[tuple[str, str, int, Transfer]]:
    """The program's default allocation on these traces at budgets 8 and 16: only their eval half
    when the calibration was fitted on this set (by its name), none without a default."""
    try:
        spec, default = default_allocation(program)
    except KeyError:
        return []
    if name.startswith(spec.split("-")[0]):
        traces = [t for t in traces if split_of(t["id"]) == "eval"]
        name += " (eval half)"
    table = build_table(traces, orderings, round_size=round_size)
    return [(name, spec, budget, transfer(capped(table, budget), default))
            for budget in TRANSFER_BUDGETS if budget <= int(table.budget.min())]


def correlation_markdown(rows: list[tuple[str, str, CertaindexCorrelation]]) -> str:
    """Certaindex against correctness per trace file (the paper's Figure 3), every question of it."""
    def f(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = ["### Certaindex against correctness (Figure 3): every question of each trace file", "",
             "Point-biserial correlation of certaindex with a right answer, over every recorded step and at the last; "
             "mean final certaindex of right and of wrong answers. Files ending in `-prm` were scored by the process "
             "reward model (deploy/reward/prm-qwen-step-tag.json), their namesakes by the generative judge.", "",
             "| traces | program | questions | steps | accuracy | r, every step | r, final | certaindex right | certaindex wrong |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {program} | {c.traces} | {c.steps} | {c.accuracy:.2f} | {f(c.r_all_steps)} | {f(c.r_final)} | "
              f"{f(c.final_right)} | {f(c.final_wrong)} |" for name, program, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=str(ROOT / "data" / "traces"), help="folder of *.jsonl trace files")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"), help="folder for the PNGs and batch.md")
    ap.add_argument("--orderings", type=int, default=ORDERINGS)
    ap.add_argument("--round-size", type=int, default=SERVER_ROUND,
                    help=f"self-consistency rounds after the first (default {SERVER_ROUND}, the server's; 0: as recorded)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    files = sorted(Path(args.traces).glob("*.jsonl"))
    if not files:
        print(f"bench-batch: no trace files in {args.traces} (record some with `dynasor record`)")
        return 1
    out = Path(args.out)
    sections, headlines, transfers, correlations = [], {}, [], []
    for path in files:
        traces = load_traces(path)
        programs = sorted({t["program"] for t in traces})
        for program in programs:
            name = path.stem if len(programs) == 1 else f"{path.stem}-{program}"
            own = [t for t in traces if t["program"] == program]
            correlations.append((name, program, certaindex_correlation(own)))
            analysis = analyse(own, "eval", args.orderings, args.round_size or None)
            plot([analysis], out / f"{name}.png", title=name)
            print(f"== {name}\n{report(analysis)}\n")
            sections.append(markdown(name, analysis, f"{name}.png"))
            for prefix, headline_program in HEADLINES:
                if path.stem.startswith(prefix) and program == headline_program and prefix not in headlines:
                    headlines[prefix] = (name, analysis)
            if program in SAMPLE_VOTERS:
                transfers += default_transfers(name, program, own, args.orderings, args.round_size or None)
    if transfers:
        sections.append(transfer_markdown(transfers))
    sections.append(correlation_markdown(correlations))
    print(correlation_markdown(correlations))
    intro = ("<!-- generated by `make bench-batch` (benchmarks/bench_batch.py) from data/traces/*.jsonl; do not edit -->\n\n"
             "Each policy replayed on programs recorded to their cap: tokens per question each needs to reach the best "
             "accuracy of a uniform budget, on the eval split (questions the fitted policies never saw), "
             f"means over {args.orderings} sample orderings.\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.md").write_text(intro + "\n" + "\n\n".join(sections) + "\n")
    for name, analysis in headlines.values():
        print(f"== headline: {analysis.program} on {name}, eval split\n{format_reach(analysis.target, analysis.reach, analysis.near)}\n")
    for name, spec, budget, t in transfers:
        print(f"== default allocation {spec} on {name} ({t.questions} questions, not fitted on), budget {budget}: "
              f"{t.tokens_ratio:.2f}x the uniform budget's tokens, {t.lost_per_16:.2f} questions lost per 16 "
              f"(worst ordering {t.lost_per_16_max:.2f}), {t.gained_per_16:.2f} gained")
    print(f"wrote {len(sections)} plots and {out / 'batch.md'} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
