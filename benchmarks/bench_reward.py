"""`make bench-reward`: the default Qwen model as a step-tag process reward model on its own pooling
engine (deploy/reward/prm-qwen-step-tag.json) beside the generative judge it replaces.

1. Memory: the served tritonserver tree's proportional set size (PSS), ready and idle, with `reward`
   as the judge (one engine) and as the PRM (a second engine, a second copy of the weights).
2. Traces: Rebase and MCTS on the questions of the committed judge traces, the same options,
   recorded on the direct engines with the PRM scoring (data/traces/*-prm.jsonl, which
   `make bench-batch` draws beside the judge's). Every candidate the PRM scores is also scored by
   the judge, so both scores of the same candidates are kept (docs/results/reward_pairs.jsonl).
3. Agreement: Spearman's rank correlation of the two scores over those candidates (scipy).
Writes docs/results/reward.json and reward.md; certaindex against correctness is bench-batch's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import psutil

from engines.engine_settings import cpu_model
from scheduler_backend.datasets import load
from scheduler_backend.reward_steps import check_settings, split_steps
from scheduler_backend.traces import read_traces, record
from serving.launcher import REPO_ROOT, start_server
from serving.model_config import policy_engine_args, reward_settings

PRM = REPO_ROOT / "deploy" / "reward" / "prm-qwen-step-tag.json"
TRACES = REPO_ROOT / "data" / "traces"
RESULTS = REPO_ROOT / "docs" / "results"
PROGRAMS = {"rebase": "grade-school-test-rebase", "mcts": "grade-school-test-mcts"}


def _tree_pss_gib(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total / 2**30


def served_memory(model: str) -> dict[str, float]:
    """PSS of the whole server (Triton, stubs, engine processes), judge then PRM, each ready and idle."""
    out = {}
    for mode, settings in (("judge", None), ("prm", json.loads(PRM.read_text()))):
        srv = start_server(policy_model=model, reward_settings=settings)
        try:
            srv.wait_ready(timeout_s=900)
            time.sleep(10)
            out[mode] = round(_tree_pss_gib(srv.process.pid), 2)
            print(f"  served, reward as {mode}: {out[mode]:.2f} GiB PSS", flush=True)
        finally:
            srv.stop()
    return out


class PairedScores:
    """The direct engine scoring with the PRM, each scored candidate also given the judge's score."""

    def __init__(self, engine: Any, judge: dict[str, Any], program: str, pairs: list[dict[str, Any]]):
        self.engine, self.judge, self.program, self.pairs = engine, judge, program, pairs

    def generate(self, call: Any) -> Any:
        return self.engine.generate(call)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        prm, judge = await asyncio.gather(self.engine.score(question, candidates),
                                          self.engine.judge_scores(question, candidates, self.judge))
        self.pairs.extend({"program": self.program, "question": question, "candidate": c, "prm": p, "judge": j}
                          for c, p, j in zip(candidates, prm, judge))
        return prm


def record_prm(model: str, limit: int) -> list[dict[str, Any]]:
    """PRM traces of both programs, as the judge's were recorded; the paired scores they met."""
    from engines.vllm_direct import VllmEngine

    pairs: list[dict[str, Any]] = []

    async def go() -> None:
        async with VllmEngine(policy_engine_args(model), reward_settings(str(PRM))) as engine:
            for program, stem in PROGRAMS.items():
                judged = read_traces(TRACES / f"{stem}.jsonl")[:limit]
                wanted = {t["id"] for t in judged}
                problems = {f"grade-school-test-{p.id}": p for p in load("grade-school", "test", 64)}
                records = [{"id": i, "question": problems[i].question, "gold": problems[i].gold, "level": problems[i].level}
                           for i in sorted(wanted, key=lambda i: int(i.rsplit("/", 1)[1]))]
                out = TRACES / f"{stem}-prm.jsonl"
                out.unlink(missing_ok=True)
                await record(PairedScores(engine, reward_settings(), program, pairs), program, records,
                             dict(judged[0]["options"]), out, concurrency=8)

    asyncio.run(go())
    return pairs


def agreement(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman's rho of the judge's and the PRM's scores on the same candidates, and of each with
    the candidate's number of steps."""
    from scipy.stats import spearmanr

    settings = check_settings(json.loads(PRM.read_text()))
    rows = {}
    for name in ["all", *PROGRAMS]:
        chosen = [p for p in pairs if name == "all" or p["program"] == name]
        if len(chosen) < 3:
            continue
        judge, prm = [p["judge"] for p in chosen], [p["prm"] for p in chosen]
        steps = [len(split_steps(p["candidate"], settings.step_separator, settings.max_steps)) for p in chosen]
        rho, pvalue = spearmanr(judge, prm)
        rows[name] = {"candidates": len(chosen), "spearman": round(float(rho), 3), "p_value": float(f"{pvalue:.2g}"),
                      "judge_mean": round(statistics.fmean(judge), 3), "prm_mean": round(statistics.fmean(prm), 3),
                      # Both against the candidate's length in steps: what the scores share with it.
                      "spearman_judge_steps": round(float(spearmanr(judge, steps)[0]), 3),
                      "spearman_prm_steps": round(float(spearmanr(prm, steps)[0]), 3)}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--limit", type=int, default=16, help="questions per program (those of the judge traces)")
    ap.add_argument("--agreement-only", action="store_true",
                    help="recompute the agreement from the committed pairs (docs/results/reward_pairs.jsonl), no engine")
    args = ap.parse_args(argv)
    out = RESULTS / "reward.json"
    if args.agreement_only:
        pairs = [json.loads(line) for line in open(RESULTS / "reward_pairs.jsonl")]
        doc = {**json.loads(out.read_text()), "agreement": agreement(pairs)}
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["agreement"], indent=2))
        return 0
    print(f"bench-reward on {cpu_model()}", flush=True)
    memory = served_memory(args.model)
    started = time.monotonic()
    pairs = record_prm(args.model, args.limit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "reward_pairs.jsonl", "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    doc = {"hardware": cpu_model(), "model": args.model, "reward_settings": str(PRM.relative_to(REPO_ROOT)),
           "served_pss_gib": memory, "recording_s": round(time.monotonic() - started), "agreement": agreement(pairs)}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
