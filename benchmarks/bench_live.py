"""Benchmark: the live server against trace replay, and the server's default allocation on
problems it was not fitted on.

0. The served engine against the recorded one, sample by sample: `policy` draws as many samples
   as the traces hold (same prompt and sampling as self-consistency) for the first held-out
   questions, and their per-sample accuracy is compared with the traces', question by question.
   Per-sample accuracy over hundreds of samples is far less noisy than a majority vote per
   question, so this is where a systematic difference between the two engines would show.
1. Self-consistency with the server's default allocation (config.pbtxt `default_allocation`, a
   shipped calibration) on held-out GSM8K questions (the eval split of the committed traces),
   through `dynasor` on the real server; the same policy replayed on the same questions' traces.
   Replay's mean over sample orderings is what a live run should score on average (the first k
   of a shuffle of independent samples are k independent samples); a live run draws new samples,
   so its spread is that of draws with replacement from the recorded answers, not the narrower
   spread of reorderings, which all share the recorded samples. Both are printed; the check is
   live within the replay mean +- 2 s.d. of fresh draws.
2. The default allocation against the uniform budget (what users run today: every program to
   its cap), live and side by side, on grade-school problems generated from a seed: a data set
   the calibration never saw.

`--program code` does 0 and 1 for the `code` program on HumanEval's held-out half (its traces and
its shipped calibration): a sample or an answer is right when its program passes the hidden tests.
"""
from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm import tqdm

from client.dynasor_client import DynasorClient
from engines.engine_settings import cpu_model
from engines.grpc_stream import StreamCall
from engines.policy_stream import SampleAccumulator, decode_deltas, policy_inputs
from scheduler_backend.answers import answers_equal
from scheduler_backend.code_behaviour import code_problem, extract_program
from scheduler_backend.datasets import is_correct, load
from scheduler_backend.engine import GenerateCall
from scheduler_backend.programs.base import sampling_from
from scheduler_backend.prompts import solve_messages
from scheduler_backend.registry import defaults
from scheduler_backend.replay import build_table, per_ordering, replay
from scheduler_backend.traces import load_traces, split_of
from serving.launcher import start_server
from serving.model_config import default_allocation

UNIFORM = {"allocation": {"kind": "uniform"}}
FRESH_DRAWS = 200  # replays of draws with replacement, for the spread of a live run


Grader = Callable[[int, str | None], bool]  # (question index, answer or program) -> right


def gold_grader(golds: Sequence[str]) -> Grader:
    return lambda i, answer: answer is not None and answers_equal(answer, golds[i])


def tests_grader(questions: Sequence[str]) -> Grader:
    """Right when the program passes the question's hidden HumanEval tests (run in the sandbox)."""
    by_question = {p.question: p for p in load("humaneval")}
    return lambda i, program: is_correct(by_question[questions[i]], program)


def solve_all(url: str, questions: Sequence[str], grade: Grader, options: dict[str, Any], concurrency: int,
              desc: str, program: str = "self-consistency") -> list[tuple[int, bool]]:
    """(tokens used, right) per question, in order; programs run `concurrency` at a time."""
    client = DynasorClient(url)
    out: list[tuple[int, bool]] = [(0, False)] * len(questions)
    with ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(client.solve, q, program, options): i for i, q in enumerate(questions)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="prog"):
            i = futures[future]
            result = future.result()
            out[i] = (result.tokens_used, grade(i, result.answer))
    return out


def sample_accuracy(url: str, traces: Sequence[dict[str, Any]], concurrency: int, program: str) -> list[tuple[float, float]]:
    """(live, recorded) share of right samples per question: `policy` draws as many samples as the
    trace holds, with the program's default prompt and sampling."""
    options = defaults(program)
    sampling = sampling_from(options)
    grade = tests_grader([t["question"] for t in traces]) if program == "code" else gold_grader([t["gold"] for t in traces])

    def one(k: int) -> tuple[float, float]:
        trace = traces[k]
        n = len(trace["samples"])
        call = GenerateCall(request_id=uuid.uuid4().hex, messages=solve_messages(trace["question"], options["prompt"]),
                            sampling=replace(sampling, n=n))
        acc = SampleAccumulator()
        for response in StreamCall(url, "policy", policy_inputs(call), request_id=call.request_id, timeout_s=900):
            acc.add(decode_deltas(response.outputs))
        if program == "code":
            problem = code_problem(trace["question"])
            answers = [extract_program(acc.texts[i], problem) for i in sorted(acc.finish_reasons)]
        else:
            answers = acc.answers()
        right = sum(grade(k, a) for a in answers)
        recorded = sum(bool(s["correct"]) if s["correct"] is not None else grade(k, s["answer"]) for s in trace["samples"])
        return right / n, recorded / n

    with ThreadPoolExecutor(concurrency) as pool:
        return list(tqdm(pool.map(one, range(len(traces))), total=len(traces), desc="served engine, per sample",
                         unit="question"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--program", default="self-consistency", choices=("self-consistency", "code"))
    ap.add_argument("--traces", help="default: the program's committed traces (GSM8K, or HumanEval for code)")
    ap.add_argument("--questions", type=int, default=50, help="held-out questions run live")
    ap.add_argument("--transfer", type=int, default=32, help="grade-school problems run under both allocations (0: skip)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--parity", type=int, default=30, help="held-out questions whose samples are drawn again from `policy` (0: skip)")
    args = ap.parse_args(argv)
    code = args.program == "code"
    spec, policy = default_allocation(args.program)
    path = args.traces or ("data/traces/humaneval-test-code16.jsonl" if code else "data/traces/gsm8k-test-sc16.jsonl")
    traces = [t for t in load_traces(path) if split_of(t["id"]) == "eval"][:args.questions]
    questions = [t["question"] for t in traces]
    grade = tests_grader(questions) if code else gold_grader([t["gold"] for t in traces])
    print(f"hardware: {cpu_model()}\ndefault allocation: {spec} = {policy}", flush=True)

    round_size = int(defaults(args.program)["round_size"])  # the server's rounds, after detect_step
    table = build_table(traces, round_size=round_size)
    replayed = replay(table, policy)
    tokens_o = per_ordering(table, replayed.tokens)
    right_o = per_ordering(table, replayed.correct)
    fresh = build_table(traces, FRESH_DRAWS, round_size=round_size, draws=True)
    drawn = replay(fresh, policy)
    tokens_sd, right_sd = per_ordering(fresh, drawn.tokens).std(ddof=1), per_ordering(fresh, drawn.correct).std(ddof=1)

    srv = start_server(policy_model=args.model)
    try:
        srv.wait_ready(timeout_s=900)
        parity = sample_accuracy(srv.grpc_url, traces[:args.parity], max(args.concurrency // 2, 1), args.program) \
            if args.parity else []
        live = solve_all(srv.grpc_url, questions, grade, {}, args.concurrency, "held-out questions, live", args.program)
        problems = [] if code else load("grade-school", "test", args.transfer)
        pairs, golds = [p.question for p in problems], gold_grader([p.gold or "" for p in problems])
        calibrated = solve_all(srv.grpc_url, pairs, golds, {}, args.concurrency, "grade-school, default allocation")
        uniform = solve_all(srv.grpc_url, pairs, golds, UNIFORM, args.concurrency, "grade-school, uniform budget")
    finally:
        srv.stop()

    if parity:
        live_s, recorded_s = np.array(parity).T
        diff = live_s - recorded_s
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(f"\n0. served engine against the recorded traces, {len(parity)} held-out questions x "
              f"{len(traces[0]['samples'])} samples; {cpu_model()}")
        print(f"share of right samples: served {live_s.mean():.3f}, recorded {recorded_s.mean():.3f}; "
              f"difference {diff.mean():+.3f} ± {se:.3f} (s.e., paired by question)")

    live_tokens = float(np.mean([t for t, _ in live]))
    live_right = float(np.mean([r for _, r in live]))
    print(f"\n1. {len(traces)} held-out questions of {path} (eval split), {args.program}, {spec}; {cpu_model()}")
    print(f"{'':<10}{'tokens/question':>18}{'accuracy':>12}")
    print(f"{'replay':<10}{tokens_o.mean():>10.0f} ± {tokens_o.std():<5.0f}{right_o.mean():>10.3f} ± {right_o.std():.3f}"
          f"   ({table.orderings} sample orderings; range {tokens_o.min():.0f}-{tokens_o.max():.0f} tokens, "
          f"{right_o.min():.3f}-{right_o.max():.3f})")
    print(f"{'':<10}{'':>10} ± {tokens_sd:<5.0f}{'':>10} ± {right_sd:.3f}   (s.d. of {FRESH_DRAWS} fresh draws: a live run's spread)")
    print(f"{'live':<10}{live_tokens:>10.0f}{'':>8}{live_right:>10.3f}")
    z_tokens, z_right = (live_tokens - tokens_o.mean()) / tokens_sd, (live_right - right_o.mean()) / right_sd
    print(f"live against replay, in s.d. of fresh draws: tokens {z_tokens:+.1f}, accuracy {z_right:+.1f}; "
          f"within 2: {'yes' if max(abs(z_tokens), abs(z_right)) <= 2 else 'no'}")

    if not problems:
        return 0
    spent = sum(t for t, _ in calibrated) / max(sum(t for t, _ in uniform), 1)
    lost = sum(u and not c for (_, c), (_, u) in zip(calibrated, uniform))
    gained = sum(c and not u for (_, c), (_, u) in zip(calibrated, uniform))
    print(f"\n2. {len(problems)} grade-school problems (seeded generator; the calibration never saw them)")
    print(f"uniform budget:     {np.mean([t for t, _ in uniform]):>7.0f} tokens/question, accuracy {np.mean([r for _, r in uniform]):.3f}")
    print(f"default allocation: {np.mean([t for t, _ in calibrated]):>7.0f} tokens/question, accuracy {np.mean([r for _, r in calibrated]):.3f}")
    print(f"tokens: {spent:.2f}x uniform; questions lost {lost}, gained {gained} (of {len(problems)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
