"""Validation of a reward request at the door; every refusal names the field (no Triton import)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scheduler_backend.errors import RequestError
from serving.triton_model import text


def validate_request(question: Sequence[Any], candidates: Sequence[Any], max_candidates: int, max_chars: int) -> tuple[str, list[str]]:
    """The question and candidates as text, or RequestError naming the first bad field."""
    if len(question) != 1:
        raise RequestError(f"question: expected one element, got {len(question)}")
    q = text(question[0], "question")
    if not q.strip():
        raise RequestError("question: must not be empty")
    if not 1 <= len(candidates) <= max_candidates:
        raise RequestError(f"candidates: expected 1 to {max_candidates} candidates, got {len(candidates)}")
    cands = [text(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
    for name, value in [("question", q)] + [(f"candidates[{i}]", c) for i, c in enumerate(cands)]:
        if len(value) > max_chars:
            raise RequestError(f"{name}: longer than {max_chars} characters ({len(value)})")
    return q, cands
