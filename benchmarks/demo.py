"""`make demo`: start the server on the model that can reason, run self-consistency programs on a
handful of GSM8K questions at once through the `dynasor` model, show for each the answer, its
certaindex and the samples it used against its budget, then stop the server."""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from client.dynasor_client import DynasorClient, ProgramError, Progress
from scheduler_backend.answers import answers_equal
from scheduler_backend.data import gold_answer, load_records
from serving.launcher import REPO_ROOT, start_server

GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
FALLBACK = [
    {"question": "A baker makes 24 muffins and sells them in boxes of 4. Each box costs $6. How much money does he make if he sells all the boxes?", "answer": "36"},
    {"question": "Sara reads 15 pages a day. Her book has 120 pages and she has already read 30. How many more days does she need?", "answer": "6"},
    {"question": "A train travels 60 miles per hour for 2.5 hours and then 40 miles per hour for 1.5 hours. How many miles does it travel?", "answer": "210"},
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--budget", type=int, default=12)
    args = ap.parse_args(argv)
    records = load_records(GSM8K, args.questions) if GSM8K.is_file() else FALLBACK[: args.questions]

    srv = start_server(policy_model=args.model)
    try:
        print(f"demo: starting tritonserver with {args.model} (about a minute; log {srv.log_path})", flush=True)
        srv.wait_ready(timeout_s=600)
        client = DynasorClient(srv.grpc_url)
        options = {"budget": args.budget, "round_size": 4, "settle_threshold": 0.7}

        def one(i: int) -> tuple[int, Progress | str]:
            def show(p: Progress) -> None:
                print(f"  [q{i + 1}] answer={p.answer!s:<10} certaindex={p.certaindex:.2f} samples={p.steps}/{p.budget}", flush=True)
            try:
                return i, client.solve(records[i]["question"], "self-consistency", options, on_progress=show)
            except ProgramError as e:
                return i, str(e)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            results = dict(pool.map(one, range(len(records))))
        wall = time.monotonic() - t0
        print(f"\n{'#':<3}{'answer':>10}{'gold':>8}{'ok':>4}{'certaindex':>12}{'samples':>10}{'stopped':>10}{'tokens':>8}  question")
        for i, record in enumerate(records):
            r, gold = results[i], gold_answer(record)
            if isinstance(r, str):
                print(f"{i + 1:<3}error: {r}")
                continue
            ok = "yes" if answers_equal(r.answer, gold) else "no"
            print(f"{i + 1:<3}{r.answer!s:>10}{gold!s:>8}{ok:>4}{r.certaindex:>12.2f}{f'{r.steps}/{r.budget}':>10}"
                  f"{r.stop_reason:>10}{r.tokens_used:>8}  {record['question'][:60]}...")
        print(f"\n{len(records)} programs in {wall:.0f} s on this machine; easy questions stop early (settled), "
              "split ones spend more samples.")
        return 0
    finally:
        print("demo: stopping the server", flush=True)
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
