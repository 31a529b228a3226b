"""`dynasor replay TRACES... [--plot out.png] [--split eval]`: every allocation policy replayed on
recorded traces (scheduler_backend/tradeoffs.py): token-to-accuracy curves and the tokens each
policy needs to reach uniform's best accuracy, per program in the files."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scheduler_backend.errors import RequestError
from scheduler_backend.replay import add_replay_arguments, check_replay_arguments
from scheduler_backend.traces import load_traces
from scheduler_backend.tradeoffs import Analysis, analyse, format_calibration, format_reach

# Drawn dashed: references a deployment cannot run (the oracle) or that ignore certaindex.
REFERENCES = ("uniform", "oracle", "output length")


def plot(analyses: Sequence[Analysis], path: str | Path, title: str = "") -> None:
    """Token-to-accuracy curves, one panel per program, error bars over the sample orderings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(analyses), figsize=(7.5 * len(analyses), 5.5), squeeze=False)
    for ax, analysis in zip(axes[0], analyses):
        for sweep in analysis.sweeps:
            points = sorted(sweep.points, key=lambda p: p.tokens)
            ax.errorbar([p.tokens for p in points], [p.accuracy for p in points],
                        xerr=[p.tokens_std for p in points], yerr=[p.accuracy_std for p in points],
                        label=sweep.name, marker="o", markersize=3, capsize=2, linewidth=1.2, elinewidth=0.6,
                        linestyle="--" if sweep.name in REFERENCES else "-")
        ax.axhline(analysis.target, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("tokens per question")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title or analysis.program}: {analysis.split} split, {analysis.questions} questions"
                     f" x {analysis.orderings} orderings", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(analysis: Analysis) -> str:
    """What `main` prints for one program."""
    head = (f"{analysis.program}: {analysis.questions} questions ({analysis.split} split) x {analysis.orderings} orderings"
            f"{f', first round {analysis.detect_step} then rounds of {analysis.round_size}' if analysis.round_size else ''}")
    return "\n".join([head, format_calibration(analysis.calibration), format_reach(analysis.target, analysis.reach, analysis.near)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynasor replay",
                                     description="Replay every allocation policy on traces recorded without early stopping.")
    parser.add_argument("traces", nargs="+", help="JSONL trace files (dynasor record)")
    parser.add_argument("--plot", help="write the token-to-accuracy curves to this PNG")
    parser.add_argument("--split", choices=("eval", "fit", "all"), default="eval",
                        help="questions to report on; curves are always fitted on the fit split (default: eval)")
    add_replay_arguments(parser)
    args = parser.parse_args(argv)
    check_replay_arguments(parser, args)
    try:
        traces = [t for path in args.traces for t in load_traces(path)]
        programs = sorted({t["program"] for t in traces})
        if not programs:
            raise RequestError(f"{', '.join(args.traces)}: no traces")
        analyses = [analyse([t for t in traces if t["program"] == p], args.split, args.orderings, args.round_size) for p in programs]
    except RequestError as exc:
        print(f"dynasor replay: error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(report(a) for a in analyses))
    if args.plot:
        plot(analyses, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
