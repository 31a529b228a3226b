"""Validation of a reward request at the door; every refusal names the field (no Triton import)."""
from __future__ import annotations

from typing import Sequence


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
