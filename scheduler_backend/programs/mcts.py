"""Reward-guided Monte Carlo tree search over reasoning steps. Each iteration selects a partial
solution by UCT, expands it by one step (`children` samples), rolls the first child out to a full
solution, scores that with the reward model and backpropagates the reward.

Answer: reward-weighted majority over the rollouts' answers; a rollout cut by its token limit
answers only if it already stated a final answer (`sample_answer`), never by an intermediate
number. Certaindex: the value (mean reward) of the best path's first move, i.e. the root child
MCTS would commit to (most visited, then best value).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scheduler_backend.allocation import AllocationPolicy
from scheduler_backend.answers import majority_answer
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


@dataclass(eq=False)
class _Node:
    text: str
    parent: _Node | None = None
    depth: int = 0
    terminal: bool = False  # a whole solution (or at max depth): scored once, never expanded
    finish_reason: str | None = None  # how the step that made this node ended
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0  # sum of rewards backpropagated through this node

    @property
    def mean(self) -> float:
        return self.value / self.visits if self.visits else 0.0

    @property
    def open(self) -> bool:
        """Whether the search can still do something here: a first visit, or an expansion."""
        if not self.visits or not self.children:
            return not (self.terminal and self.visits)
        return any(c.open for c in self.children)


class Mcts(PolicyProgram):
    """Knob: iterations; `budget` is the most iterations. A new node is rolled out on its first
    visit and expanded on its next; nodes at `max_depth` are only rolled out, once; a whole
    solution is scored once and closed. `exploration` is UCT's c."""

    name = "mcts"

    def __init__(self, question: str, budget: int, policy: AllocationPolicy, *, sampling: SamplingSpec,
                 children: int = 3, max_depth: int = 6, rollout_tokens: int = 384, exploration: float = 1.0,
                 answer_format: str = "auto", prompt: str = "math"):
        super().__init__(question, budget, policy, prompt)
        require_positive(children=children, max_depth=max_depth, rollout_tokens=rollout_tokens)
        if exploration < 0:
            raise ValueError(f"exploration: must be >= 0, got {exploration}")
        self.step_sampling = replace(sampling, n=children, stop=(STEP_SEPARATOR,))
        self.rollout_sampling = replace(sampling, n=1, max_tokens=rollout_tokens, stop=())
        self.max_depth, self.exploration = max_depth, exploration
        self.answer_format = answer_format
        self.root = _Node("")
        self.rollouts: list[tuple[str | None, float]] = []  # (answer, reward)
        self.iterations = 0
        self._waiting = False
        self._next: Step | None = None  # the iteration's next phase, once the previous one is back
        self._node: _Node | None = None  # the node the outstanding step is about
        self._text = ""  # the rollout being scored
        self._rollout_finish: str | None = None  # how the rollout's last generation ended

    @classmethod
    def from_options(cls, question: str, o: Mapping[str, Any], policy: AllocationPolicy) -> Mcts:
        return cls(question, o["budget"], policy, sampling=sampling_from(o), children=o["children"],
                   max_depth=o["max_depth"], rollout_tokens=o["rollout_tokens"], exploration=o["exploration"],
                   answer_format=o["answer_format"], prompt=o["prompt"])

    def next_steps(self) -> list[Step]:
        if self.done or self._waiting:
            return []
        step, self._next = self._next or self._start_iteration(), None
        self._waiting = True
        return [step]

    def _start_iteration(self) -> Step:
        leaf = self._select()
        if leaf.terminal or (leaf.visits == 0 and leaf is not self.root) or leaf.depth >= self.max_depth:
            return self._rollout(leaf)
        self._node = leaf
        messages = self.solve_messages(leaf.text)
        return GenerateStep(f"i{self.iterations}:expand", self.step_sampling, messages)

    def _select(self) -> _Node:
        node = self.root
        while node.children:
            candidates = [c for c in node.children if c.open]
            node = max(candidates, key=lambda c: self._uct(c, node.visits))
        return node

    def _uct(self, child: _Node, parent_visits: int) -> float:
        if not child.visits:
            return math.inf
        return child.mean + self.exploration * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)

    def _rollout(self, node: _Node) -> Step:
        self._node = node
        if node.terminal:
            self._text, self._rollout_finish = node.text, node.finish_reason
            return ScoreStep(f"i{self.iterations}:score", self.question, (node.text,))
        messages = self.solve_messages(node.text)
        return GenerateStep(f"i{self.iterations}:rollout", self.rollout_sampling, messages)

    def _absorb(self, result: StepResult) -> None:
        self._waiting = False
        kind = result.key.rsplit(":", 1)[1]
        node = self._node
        assert node is not None
        if kind == "expand":
            for s in result.samples:
                child = _Node(extend(node.text, s.text, s.finish_reason), node, node.depth + 1,
                              terminal=ends_solution(s.text, s.finish_reason), finish_reason=s.finish_reason)
                node.children.append(child)
            self._next = self._rollout(node.children[0] if node.children else node)
        elif kind == "rollout":
            self._text = node.text + "".join(s.text for s in result.samples)
            self._rollout_finish = result.samples[-1].finish_reason if result.samples else node.finish_reason
            self._next = ScoreStep(f"i{self.iterations}:score", self.question, (self._text,))
        else:
            self._backpropagate(node, result.scores[0] if result.scores else 0.0)

    def _backpropagate(self, node: _Node, reward: float) -> None:
        if node.depth >= self.max_depth:
            node.terminal = True  # never expanded: its one rollout is all it gets
        self.rollouts.append((sample_answer(self._text, self._rollout_finish, self.answer_format), reward))
        self.iterations += 1
        walk: _Node | None = node
        while walk is not None:
            walk.visits += 1
            walk.value += reward
            walk = walk.parent
        self._consult(natural_end=not self.root.open)

    def _best_child(self) -> _Node | None:
        return max(self.root.children, key=lambda c: (c.visits, c.mean), default=None)

    def certaindex(self) -> float:
        best = self._best_child()
        return best.mean if best is not None and best.visits else 0.0

    def best_answer(self) -> str | None:
        return majority_answer([a for a, _ in self.rollouts], weights=[r for _, r in self.rollouts])[0]

    def steps_used(self) -> int:
        return self.iterations

    def units_committed(self) -> int:
        return self.iterations + (self._waiting or self._next is not None)

    def extra_state(self) -> dict[str, Any]:
        best = self._best_child()
        return {"rollouts": len(self.rollouts), "best_value": round(best.mean, 4) if best and best.visits else None}
