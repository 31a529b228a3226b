"""The reasoning-program interface: a program is a state machine that asks for engine work and
takes results back, with no I/O inside, so the server, a trace replay and a simulator can all
drive the very same program (the shape of nano-vllm's scheduler: decisions out, results in).

A driver loops: `next_steps()` -> run them on an engine -> `on_result()` for each, until `done`.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from scheduler_backend.engine import ChatMessage, SamplingSpec


class StopReason(str, Enum):
    """Why a program stopped; reported to the client and counted in metrics."""

    SETTLED = "settled"  # certaindex said the answer is settled (early stop)
    CAP = "cap"  # used its whole resource cap
    HOPELESS = "hopeless"  # certaindex stayed too low: more compute will not help
    FINISHED = "finished"  # the algorithm ran to its natural end before the cap
    DEADLINE = "deadline"  # its deadline came: the best answer so far is returned
    REFUSED = "refused"  # its deadline cannot meet its quality floor: no answer, the time it would need instead
    CANCELLED = "cancelled"  # the client went away or cancelled
    DRAINED = "drained"  # its server was draining and the grace period ended: the best answer so far is returned
    ERROR = "error"  # the engine failed the program


@dataclass(frozen=True)
class GenerateStep:
    """Ask the policy engine for `sampling.n` samples. `key` is unique within the program."""

    key: str
    sampling: SamplingSpec
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""


@dataclass(frozen=True)
class ScoreStep:
    """Ask the reward model for one score in [0, 1] per candidate (partial) solution."""

    key: str
    question: str
    candidates: tuple[str, ...]


Step = GenerateStep | ScoreStep


@dataclass
class Sample:
    text: str
    num_tokens: int
    finish_reason: str | None = None
    cumulative_logprob: float | None = None


@dataclass
class StepResult:
    """A finished step: `samples` for a GenerateStep, `scores` for a ScoreStep."""

    key: str
    samples: list[Sample] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.samples)


@dataclass
class ProgramState:
    """What a program reports while it runs and when it stops."""

    answer: str | None
    certaindex: float
    steps: int  # units of the knob the program scales (samples, expansions, iterations, chunks)
    budget: int  # cap on those units
    tokens_used: int
    done: bool
    stop_reason: StopReason | None
    extra: dict[str, Any] = field(default_factory=dict)


class ReasoningProgram(abc.ABC):
    """One reasoning program for one question. Subclasses set `name` and implement the steps.

    Subclasses call `_finish(reason)` when their own logic stops them; drivers call `stop(reason)`
    for deadlines and cancellation. Token counting is done here so every program reports alike.
    """

    name: ClassVar[str]

    def __init__(self, question: str, budget: int):
        if budget < 1:
            raise ValueError(f"budget: must be >= 1, got {budget}")
        self.question = question
        self.budget = budget
        self.tokens_used = 0
        self.stop_reason: StopReason | None = None
        self.min_units = 0  # the quality floor: no early stop (settled, hopeless) below it

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @abc.abstractmethod
    def next_steps(self) -> list[Step]:
        """Steps to issue now; empty while the program waits on steps already issued."""

    def on_result(self, result: StepResult) -> None:
        """Take a finished step back. A stopped program ignores late results."""
        self.tokens_used += result.num_tokens
        if not self.done:
            self._absorb(result)

    @abc.abstractmethod
    def _absorb(self, result: StepResult) -> None:
        """Update the program with one finished step; may call `_finish`."""

    @abc.abstractmethod
    def certaindex(self) -> float:
        """How settled the answer is, in [0, 1]."""

    @abc.abstractmethod
    def best_answer(self) -> str | None:
        """The answer the program would return if stopped now."""

    def answer_text(self) -> str | None:
        """The generated text the answer comes from (a sample ending in it), for clients that show
        a response rather than an answer (the OpenAI front); None where the program keeps none."""
        return None

    def has_answer(self) -> bool:
        """Whether `best_answer` would give one; drivers ask on their event loop, so programs
        whose `best_answer` compares answers override it with a cheap check."""
        return self.best_answer() is not None

    @abc.abstractmethod
    def steps_used(self) -> int:
        """Units of the scaled knob spent so far (compared against `budget`)."""

    def predicted_remaining(self) -> float:
        """Knob units this program is still expected to spend; the scheduler's job size.
        The default assumes the worst (run to the cap); allocators refine it."""
        return 0.0 if self.done else float(max(self.budget - self.steps_used(), 0))

    def units_committed(self) -> int:
        """Knob units spent or in flight: what `limit_budget` never cuts below."""
        return self.steps_used()

    def first_units(self) -> int:
        """Knob units the first step asks for: the least work the program needs before it can
        answer (admission control sizes a deadline's feasibility by it)."""
        return 1

    def limit_budget(self, units: int) -> int:
        """Lower the budget to `units` (a deadline leaves time for no more), never below the
        units spent or in flight, nor below 1; returns the budget. A program with nothing left
        to issue or await stops at its cap, since it would issue no step."""
        self.budget = min(self.budget, max(units, self.units_committed(), 1))
        if not self.done and self.budget <= self.steps_used() == self.units_committed():
            self._finish(StopReason.CAP)
        return self.budget

    def last_round(self) -> None:
        """The deadline leaves time for one more round at most: issue what remains of the budget
        together rather than in rounds one after another. Programs without rounds ignore it."""
        return None

    def probe_steps(self, partials: Sequence[str]) -> list[Step]:
        """Steps that draw answers out of unfinished samples (`partials`: the text each had when
        its generation was cut), asked when a deadline comes before the program has an answer;
        their results come back through `on_result`. None by default: not every program can."""
        return []

    def stop(self, reason: StopReason) -> None:
        """Stop from outside (deadline, cancel, engine error); keeps the first reason."""
        self._finish(reason)

    def _finish(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def state(self) -> ProgramState:
        return ProgramState(
            answer=self.best_answer(),
            certaindex=self.certaindex(),
            steps=self.steps_used(),
            budget=self.budget,
            tokens_used=self.tokens_used,
            done=self.done,
            stop_reason=self.stop_reason,
            extra=self.extra_state(),
        )

    def extra_state(self) -> dict[str, Any]:
        """Program-specific progress for clients (e.g. answer clusters); JSON-serializable."""
        return {}
