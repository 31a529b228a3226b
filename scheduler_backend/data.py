"""Question files as the CLI, the recorder and the benchmarks read them: JSONL records with a
question (or problem) and, when graded, an answer in GSM8K, MATH or AIME form."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scheduler_backend.answers import extract_answer


def gold_answer(record: dict[str, Any]) -> str | None:
    """GSM8K keeps its answer after '####' in a worked solution; MATH and AIME give it plainly."""
    answer = record.get("answer")
    if answer is None:
        return None
    answer = str(answer)
    return extract_answer(answer, "gsm8k") if "####" in answer else answer


def load_records(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The file's records in order (the first `limit`), each checked to carry a question."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not (record.get("question") or record.get("problem")):
                raise ValueError(f"{path}:{n}: expected a JSON object with 'question' or 'problem'")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records
