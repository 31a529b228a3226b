"""How well certaindex foretells correctness on recorded traces (the Dynasor paper's Figure 3):
the point-biserial correlation of certaindex with a right answer, over every step of every trace
and at each trace's last step, and the mean certaindex of right and wrong final answers. What it
compares: two reward models (or any two recordings) of one program on the same questions."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CertaindexCorrelation:
    traces: int
    steps: int
    r_all_steps: float | None  # None where certaindex or correctness never varies
    r_final: float | None
    final_right: float | None  # mean final certaindex of right answers (None: there are none)
    final_wrong: float | None
    accuracy: float


def _r(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def certaindex_correlation(traces: Sequence[Mapping[str, Any]]) -> CertaindexCorrelation:
    """Certaindex against correctness, from each trace's history (steps with a known correctness)."""
    steps = [(float(h["certaindex"]), float(bool(h["correct"]))) for t in traces for h in t["history"] if h["correct"] is not None]
    finals = [(float(t["history"][-1]["certaindex"]), bool(t["history"][-1]["correct"])) for t in traces if t["history"]]
    return CertaindexCorrelation(
        traces=len(traces), steps=len(steps),
        r_all_steps=_r([c for c, _ in steps], [k for _, k in steps]),
        r_final=_r([c for c, _ in finals], [float(k) for _, k in finals]),
        final_right=_mean([c for c, k in finals if k]), final_wrong=_mean([c for c, k in finals if not k]),
        accuracy=float(np.mean([k for _, k in finals])) if finals else 0.0)
