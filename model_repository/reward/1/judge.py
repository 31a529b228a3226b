"""Pure parts of the reward model: door validation and the yes/no judge score (no Triton import)."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence


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


def _text(value, field: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{field}: not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise ValueError(f"{field}: expected a string, got {type(value).__name__}")


def validate_request(question: Sequence, candidates: Sequence, max_candidates: int, max_chars: int) -> tuple[str, list[str]]:
    if len(question) != 1:
        raise ValueError(f"question: expected one element, got {len(question)}")
    q = _text(question[0], "question")
    if not q.strip():
        raise ValueError("question: must not be empty")
    if not 1 <= len(candidates) <= max_candidates:
        raise ValueError(f"candidates: expected 1 to {max_candidates} candidates, got {len(candidates)}")
    cands = [_text(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
    for name, text in [("question", q)] + [(f"candidates[{i}]", c) for i, c in enumerate(cands)]:
        if len(text) > max_chars:
            raise ValueError(f"{name}: longer than {max_chars} characters ({len(text)})")
    return q, cands
