"""The generative judge's score: an instruct model asked "is this correct? yes/no" is a reward
model whose score is its probability of "yes". Shared by the `reward` model and the direct engine."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def judge_score(top_logprobs: Mapping[str, float], yes_tokens: Iterable[str], no_tokens: Iterable[str]) -> float:
    """P(yes) / (P(yes) + P(no)) over the first token's top logprobs; variants such as " Yes" count.
    0.5 when the judge put neither word in its top list: no evidence either way."""
    yes = {t.lower() for t in yes_tokens}
    no = {t.lower() for t in no_tokens}
    p_yes = p_no = 0.0
    for token, logprob in top_logprobs.items():
        word = token.strip().lower()
        if word in yes:
            p_yes += math.exp(logprob)
        elif word in no:
            p_no += math.exp(logprob)
    if p_yes + p_no == 0.0:
        return 0.5
    return p_yes / (p_yes + p_no)
