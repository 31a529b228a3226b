"""`make bench-accuracy`: how often the default model is right with the project's prompts, per data
set: accuracy per sample, of the majority of N samples and of any of N, and the share of samples
cut at the token cap before they stated an answer. On HumanEval the majority is the largest behaviour
cluster (as the `code` program votes), "right" is passing the hidden tests, and pass@1 of greedy
decoding is added for reference against the model card.

It runs vLLM directly (the engine settings the `policy` model would pick on this machine) with the
same prompts, answer extraction and voting as the self-consistency program, so the figures are
the model's and the prompt's, not the scheduler's. Prompts were chosen on training questions:
`--split train` reproduces that choice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.engine_settings import cpu_model, settings_for_this_machine
from scheduler_backend.answers import majority_answer
from scheduler_backend.code_behaviour import code_problem, extract_program, vote
from scheduler_backend.datasets import DATASETS, Problem, is_correct, load
from scheduler_backend.programs.base import sample_answer
from scheduler_backend.prompts import PROMPTS, solve_messages
from scheduler_backend.traces import split_of
from serving.launcher import resolve_model


@dataclass(frozen=True)
class SetPlan:
    prompt: str
    max_tokens: int
    limit: int


PLANS = {
    "gsm8k": SetPlan("math", 640, 200),
    "grade-school": SetPlan("math", 640, 48),
    "math500": SetPlan("math", 1024, 30),
    "aime24": SetPlan("math", 768, 30),
    "game24": SetPlan("game24", 384, 30),
    "humaneval": SetPlan("code", 512, 164),
}


def grade_code(problem: Problem, texts: list[str]) -> dict:
    """As the code program votes: each sample's program, clustered by its behaviour on the calls the
    statement shows; graded by the hidden tests, which the vote never sees."""
    voted = vote(texts, code_problem(problem.question))
    right = [is_correct(problem, s) for s in voted.sources]
    chosen = voted.chosen
    return {"id": problem.id, "gold": None, "answers": voted.prints, "correct": right,
            "majority": None if chosen is None else voted.prints[chosen],
            "majority_correct": chosen is not None and right[chosen], "capped_without_answer": 0}


def grade(problem: Problem, texts: list[str], finish: list[str | None]) -> dict:
    answers = [sample_answer(t, f, "auto") for t, f in zip(texts, finish)]
    right = [is_correct(problem, a) for a in answers]
    majority = majority_answer(answers)[0]
    return {
        "id": problem.id, "gold": problem.gold, "answers": answers, "correct": right,
        "majority": majority, "majority_correct": is_correct(problem, majority),
        "capped_without_answer": sum(f == "length" and a is None for a, f in zip(answers, finish)),
    }


def evaluate(llm, tokenizer, dataset: str, split: str, plan: SetPlan, samples: int, temperature: float,
             skip: int = 0, half: str = "all") -> list[dict]:
    from vllm import SamplingParams

    problems = load(dataset, split, skip + plan.limit)[skip:]
    if half != "all":  # HumanEval has one split: the traces' hash halves stand in (fit: choosing, eval: reporting)
        problems = [p for p in problems if split_of(f"{dataset}-{split}-{p.id}") == half]
    chats = [[{"role": m.role, "content": m.content} for m in solve_messages(p.question, plan.prompt)] for p in problems]
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    params = SamplingParams(n=samples, temperature=temperature, top_k=50, max_tokens=plan.max_tokens)
    outputs = llm.generate(prompts, params, use_tqdm=True)
    greedy = llm.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=plan.max_tokens), use_tqdm=True) \
        if plan.prompt == "code" else [None] * len(problems)
    rows = []
    for problem, out, first in zip(problems, outputs, greedy):
        texts = [o.text for o in out.outputs]
        row = grade_code(problem, texts) if plan.prompt == "code" else grade(problem, texts, [o.finish_reason for o in out.outputs])
        row["tokens"] = [len(o.token_ids) for o in out.outputs]
        if first is not None:  # pass@1 greedy: the figure model cards report
            row["greedy_correct"] = is_correct(problem, extract_program(first.outputs[0].text, code_problem(problem.question)))
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    n = sum(len(r["correct"]) for r in rows)
    return {
        "questions": len(rows),
        "per_sample": sum(sum(r["correct"]) for r in rows) / n,
        "majority": sum(r["majority_correct"] for r in rows) / len(rows),
        "any": sum(any(r["correct"]) for r in rows) / len(rows),
        "cap_rate": sum(r["capped_without_answer"] for r in rows) / n,
        "mean_tokens": sum(sum(r["tokens"]) for r in rows) / n,
        **({"greedy": sum(r["greedy_correct"] for r in rows) / len(rows)} if rows and "greedy_correct" in rows[0] else {}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(PLANS), choices=DATASETS)
    ap.add_argument("--split", default="test", choices=("test", "train"))
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--limit", type=int, help="questions per set (default: each set's plan)")
    ap.add_argument("--prompt", choices=PROMPTS, help="one prompt for every set (default: each set's own)")
    ap.add_argument("--max-tokens", type=int, help="default: each set's plan")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N questions (the prompts' examples)")
    ap.add_argument("--half", default="all", choices=("all", "fit", "eval"),
                    help="only questions of this hash half (traces.split_of): choose prompts on fit, report on eval")
    ap.add_argument("--output", default="results/accuracy.json")
    args = ap.parse_args(argv)

    from vllm import LLM

    settings = settings_for_this_machine({"model": resolve_model(args.model), "max_model_len": 4096,
                                          "enable_prefix_caching": True, "max_num_seqs": 64,
                                          "gpu_memory_utilization": 0.5})
    os.environ.update(settings.env)
    print(f"engine settings: {settings.describe()}\nhardware: {cpu_model()}", flush=True)
    llm = LLM(**settings.engine_args)
    tokenizer = llm.get_tokenizer()
    results: dict[str, dict[str, Any]] = {}
    for dataset in args.datasets:
        base = PLANS[dataset]
        plan = SetPlan(args.prompt or base.prompt, args.max_tokens or base.max_tokens, args.limit or base.limit)
        t0 = time.monotonic()
        rows = evaluate(llm, tokenizer, dataset, args.split, plan, args.samples, args.temperature, args.skip, args.half)
        results[dataset] = {"plan": plan.__dict__, "summary": summarize(rows), "seconds": time.monotonic() - t0, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"hardware": cpu_model(), "split": args.split, "samples": args.samples,
                                             "temperature": args.temperature, "sets": results}, indent=1))
    k = args.samples
    print(f"\n{args.model}, {args.split} split ({args.half} half), {k} samples at temperature {args.temperature}; {cpu_model()}")
    print(f"{'set':<14}{'prompt':<14}{'tokens':>7}{'questions':>10}{'per sample':>11}{f'major.-of-{k}':>13}"
          f"{f'any-of-{k}':>10}{'cut, no answer':>15}{'mean tokens':>12}{'seconds':>9}")
    for dataset, r in results.items():
        s, p = r["summary"], r["plan"]
        print(f"{dataset:<14}{p['prompt']:<14}{p['max_tokens']:>7}{s['questions']:>10}{s['per_sample']:>11.1%}"
              f"{s['majority']:>13.1%}{s['any']:>10.1%}{'-' if p['prompt'] == 'code' else format(s['cap_rate'], '.1%'):>15}{s['mean_tokens']:>12.0f}{r['seconds']:>9.0f}"
              + (f"   greedy pass@1 {s['greedy']:.1%}" if "greedy" in s else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
