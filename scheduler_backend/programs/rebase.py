"""REBASE (Wu et al. 2024): reward-balanced search over reasoning steps. Each depth extends every
live partial solution by one step, scores the new partial solutions with the reward model, and
spreads the next depth's expansions over them in proportion to softmax(score / T), so promising
branches get more children and weak ones die without being pruned by a hard beam.

A solution whose last step was cut by the token limit answers only if it already stated a final
answer (`sample_answer`), never by the last number of its unfinished text.

Certaindex = weighted_agreement(finished answers, their rewards) x the best finished reward: high
only when finished solutions agree *and* the reward model believes them; 0 before any finishes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from scheduler_backend.allocation import AllocationPolicy
from scheduler_backend.answers import majority_answer
from scheduler_backend.certaindex import reward_certaindex, weighted_agreement
from scheduler_backend.engine import SamplingSpec
from scheduler_backend.program import GenerateStep, ScoreStep, Step, StepResult
from scheduler_backend.programs.base import (
    STEP_SEPARATOR,
    PolicyProgram,
    ends_solution,
    extend,
    require_positive,
    sample_answer,
    sampling_from,
)


@dataclass
class _Candidate:
    text: str
    score: float = 1.0
    answer: str | None = None
    finish_reason: str | None = None  # how its last step ended

    def final_answer(self, fmt: str) -> str | None:
        """Its answer by `sample_answer`'s rule: text cut by the token limit needs a stated one."""
        return sample_answer(self.text, self.finish_reason, fmt)


def allocate(scores: list[float], total: int, temperature: float, cap: int) -> list[int]:
    """Children per candidate: `total` split by softmax(score / temperature), largest remainder
    first, at most `cap` each (so the sum can fall short when every candidate is capped)."""
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    quota = [total * w / sum(weights) for w in weights]
    counts = [min(int(q), cap) for q in quota]
    for _ in range(total - sum(counts)):
        open_ = [i for i in range(len(counts)) if counts[i] < cap]
        if not open_:
            break
        best = max(open_, key=lambda i: (quota[i] - counts[i], -i))
        counts[best] += 1
    return counts


class Rebase(PolicyProgram):
    """Knob: expansions (generated steps); `budget` is the most expansions. `width` is the number
    of solutions the search keeps growing (each finished one takes a slot), `children` the most
    expansions one candidate gets per depth (the root excepted), `max_depth` bounds the steps."""

    name = "rebase"

    def __init__(self, question: str, budget: int, policy: AllocationPolicy, *, sampling: SamplingSpec,
                 width: int = 4, children: int = 3, max_depth: int = 8, reward_temperature: float = 0.2,
                 answer_format: str = "auto", prompt: str = "math"):
        super().__init__(question, budget, policy, prompt)
        require_positive(width=width, children=children, max_depth=max_depth, reward_temperature=reward_temperature)
        self.sampling = replace(sampling, stop=(STEP_SEPARATOR,))
        self.width, self.children, self.max_depth = width, children, max_depth
        self.reward_temperature = reward_temperature
        self.answer_format = answer_format
        self.live: list[_Candidate] = [_Candidate("")]
        self.finished: list[_Candidate] = []
        self.depth = 0
        self.expansions = 0  # issued
        self.received = 0
        self._parents: dict[str, _Candidate] = {}  # outstanding generate steps of this depth
        self._new: list[tuple[_Candidate, bool]] = []  # (child, ends the solution) awaiting scores
        self._scoring = False

    @classmethod
    def from_options(cls, question: str, o: Mapping[str, Any], policy: AllocationPolicy) -> Rebase:
        return cls(question, o["budget"], policy, sampling=sampling_from(o), width=o["width"],
                   children=o["children"], max_depth=o["max_depth"], reward_temperature=o["reward_temperature"],
                   answer_format=o["answer_format"], prompt=o["prompt"])

    def next_steps(self) -> list[Step]:
        if self.done or self._parents or self._scoring:
            return []
        if self._new:
            self._scoring = True
            return [ScoreStep(f"d{self.depth}:score", self.question, tuple(c.text for c, _ in self._new))]
        room = min(self.width - len(self.finished), self.budget - self.expansions)
        cap = room if self.depth == 0 else self.children
        counts = allocate([c.score for c in self.live], room, self.reward_temperature, cap)
        steps: list[Step] = []
        for j, (parent, n) in enumerate(zip(self.live, counts)):
            if n:
                key = f"d{self.depth}:c{j}"
                self._parents[key] = parent
                messages = self.solve_messages(parent.text)
                steps.append(GenerateStep(key, replace(self.sampling, n=n), messages))
        self.expansions += sum(counts)
        return steps

    def _absorb(self, result: StepResult) -> None:
        if result.key in self._parents:
            parent = self._parents.pop(result.key)
            self.received += len(result.samples)
            for s in result.samples:
                child = _Candidate(extend(parent.text, s.text, s.finish_reason), finish_reason=s.finish_reason)
                self._new.append((child, ends_solution(s.text, s.finish_reason)))
            return
        self._scoring = False
        self.depth += 1
        self.live = []
        for (child, final), score in zip(self._new, result.scores):
            child.score = score
            if final:
                child.answer = child.final_answer(self.answer_format)
                self.finished.append(child)
            else:
                self.live.append(child)
        self._new = []
        natural_end = not self.live or len(self.finished) >= self.width or self.depth >= self.max_depth
        self._consult(natural_end=natural_end)

    def certaindex(self) -> float:
        if not self.finished:
            return 0.0
        scores = [c.score for c in self.finished]
        return weighted_agreement([c.answer for c in self.finished], scores) * reward_certaindex(scores)

    def best_answer(self) -> str | None:
        if self.finished:
            answers = [c.answer for c in self.finished]
        else:
            answers = [c.final_answer(self.answer_format) for c in self.live]
        pool = self.finished or self.live
        return majority_answer(answers, weights=[c.score for c in pool])[0]

    def steps_used(self) -> int:
        return self.received

    def units_committed(self) -> int:
        return self.expansions

    def first_units(self) -> int:
        return min(self.width, self.budget)

    def extra_state(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "live": len(self.live),
            "finished": len(self.finished),
            "best_reward": max((c.score for c in self.finished), default=None),
        }
