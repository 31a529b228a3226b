"""`dynasor solve FILE.jsonl`: many programs at once through the server, with a progress bar and,
when the records carry answers, accuracy and compute used against the budget."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from tqdm import tqdm

from client.dynasor_client import DynasorClient, ProgramError
from scheduler_backend.answers import answers_equal
from scheduler_backend.datasets import gold_answer, load_records


def solve_file(path: str, url: str, protocol: str = "grpc", program: str | None = None, options: dict | None = None,
               concurrency: int = 8, limit: int | None = None, output: str | None = None) -> int:
    records = load_records(path, limit)
    client = DynasorClient(url, protocol=protocol)

    def one(record: dict[str, Any]) -> dict[str, Any]:
        question = str(record.get("question") or record.get("problem"))
        row: dict[str, Any] = {"question": question, "gold": gold_answer(record)}
        try:
            p = client.solve(question, program, options)
            row.update(answer=p.answer, certaindex=p.certaindex, stop_reason=p.stop_reason, steps=p.steps,
                       budget=p.budget, tokens_used=p.tokens_used, latency_s=p.latency_s)
        except ProgramError as e:
            row["error"] = str(e)
        if row["gold"] is not None and "error" not in row:
            row["correct"] = answers_equal(row["answer"], row["gold"])
        return row

    rows: list[dict[str, Any]] = [{} for _ in records]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(one, record): i for i, record in enumerate(records)}
        # The bar moves as programs finish, in whatever order they do.
        for future in tqdm(as_completed(futures), total=len(records), desc="programs", unit="prog"):
            rows[futures[future]] = future.result()
    if output:
        with open(output, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    done = [r for r in rows if "error" not in r]
    graded = [r for r in done if "correct" in r]
    print(f"programs: {len(rows)}  errors: {len(rows) - len(done)}")
    if done:
        steps, budget = sum(r["steps"] for r in done), sum(r["budget"] for r in done)
        print(f"steps used: {steps}/{budget} ({steps / budget:.0%} of the budget)  tokens: {sum(r['tokens_used'] for r in done)}")
        reasons: dict[str, int] = {}
        for r in done:
            reasons[r["stop_reason"]] = reasons.get(r["stop_reason"], 0) + 1
        print("stopped: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    if graded:
        print(f"accuracy: {sum(r['correct'] for r in graded) / len(graded):.1%} of {len(graded)}")
    return 0 if len(done) == len(rows) else 1
