"""Synthetic traces in the recorder's format (scheduler_backend/traces.py), for replay and
calibration tests: questions of chosen difficulty, samples drawn from a seeded generator, and a
history computed by the project's own certaindex and majority vote in the recorded order."""
from __future__ import annotations

import random

from scheduler_backend.answers import majority_answer
from scheduler_backend.certaindex import entropy_certaindex
from scheduler_backend.traces import TRACE_FORMAT


def sc_trace(trace_id: str, answers: list[str | None], tokens: list[int], gold: str | None = "42",
             detect_step: int = 4, round_size: int = 4) -> dict:
    """A self-consistency trace with these samples in this order; history after each round."""
    budget = len(answers)
    samples = [{"answer": a, "tokens": t, "finish_reason": "stop" if a is not None else "length",
                "correct": None if gold is None else a == gold} for a, t in zip(answers, tokens)]
    ends = list(range(min(detect_step, budget), budget + 1, round_size))
    if not ends or ends[-1] != budget:
        ends.append(budget)
    history = []
    for end in ends:
        answer = majority_answer(answers[:end])[0]
        history.append({"steps": end, "certaindex": entropy_certaindex(answers[:end]), "answer": answer,
                        "tokens_used": sum(tokens[:end]), "correct": None if gold is None else answer == gold})
    return {"format": TRACE_FORMAT, "id": trace_id, "program": "self-consistency", "question": f"question {trace_id}",
            "gold": gold, "budget": budget, "options": {"detect_step": detect_step, "round_size": round_size},
            "stop_reason": "cap", "correct": history[-1]["correct"], "samples": samples, "rewards": [],
            "history": history}


def random_sc_traces(count: int, budget: int = 16, seed: int = 0) -> list[dict]:
    """Questions from easy (most samples right) to hopeless (scattered wrong answers); easy
    questions get shorter samples, as real ones tend to."""
    rng = random.Random(seed)
    traces = []
    for q in range(count):
        p_right = rng.choice([0.95, 0.8, 0.6, 0.4, 0.1])
        answers: list[str | None] = []
        for _ in range(budget):
            r = rng.random()
            answers.append("42" if r < p_right else None if r > 0.97 else str(rng.randint(1, 3 + int(10 * (1 - p_right)))))
        tokens = [int(rng.gauss(150 + 300 * (1 - p_right), 30)) for _ in range(budget)]
        traces.append(sc_trace(f"q{q}", answers, [max(t, 1) for t in tokens]))
    return traces


def history_trace(trace_id: str, answers: list[str | None], certaindex: list[float], gold: str | None = "42",
                  program: str = "mcts", tokens_per_step: int = 100) -> dict:
    """A trace of a program replayed along its history (one entry per knob unit)."""
    history = [{"steps": i + 1, "certaindex": c, "answer": a, "tokens_used": tokens_per_step * (i + 1),
                "correct": None if gold is None else a == gold}
               for i, (a, c) in enumerate(zip(answers, certaindex))]
    return {"format": TRACE_FORMAT, "id": trace_id, "program": program, "question": f"question {trace_id}",
            "gold": gold, "budget": len(answers), "options": {}, "stop_reason": "cap",
            "correct": history[-1]["correct"], "samples": [], "rewards": [], "history": history}
