"""Certaindex: how settled a program's answer already is, in [0, 1], so the scheduler can stop
spending compute on programs whose extra samples would no longer change the answer."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

from scheduler_backend.answers import answers_equal, cluster_answers, majority_answer

HEDGE_WORDS: tuple[str, ...] = ("wait", "hold", "but", "okay", "no", "hmm")
_HEDGE_RE = re.compile(r"\b(?:" + "|".join(HEDGE_WORDS) + r")\b", re.IGNORECASE)


def entropy_certaindex(answers: Sequence[str | None]) -> float:
    """Entropy over its maximum log(n), so that one threshold serves programs at any sample count."""
    n = len(answers)
    if n < 2:
        return 0.0
    sizes = [len(c) for c in cluster_answers(answers)] + [1] * sum(a is None for a in answers)
    entropy = -sum(k / n * math.log(k / n) for k in sizes)
    return min(1.0, max(0.0, 1.0 - entropy / math.log(n)))


def reward_certaindex(scores: Sequence[float]) -> float:
    """A search program is as sure as its best-scored path: the reward model already ranks the paths."""
    return min(1.0, max(0.0, float(max(scores)))) if len(scores) else 0.0


def weighted_agreement(answers: Sequence[str | None], weights: Sequence[float]) -> float:
    """Share of reward weight behind the leading answer, for searches that finish several solutions."""
    return majority_answer(answers, weights)[1]


def probe_certaindex(probe_answers: Sequence[str | None], window: int) -> float:
    """Agreement of the last `window` probes with the latest one, counted over the whole window so
    that a chain of thought only looks settled after `window` probes have said the same thing."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if not probe_answers or probe_answers[-1] is None:
        return 0.0
    latest = probe_answers[-1]
    return sum(answers_equal(p, latest) for p in probe_answers[-window:]) / window


def is_hedging(text: str) -> bool:
    """A probe that hedges is not yet committed to its answer, whatever the answer says."""
    return _HEDGE_RE.search(text) is not None
