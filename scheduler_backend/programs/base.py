"""What the built-in programs share: an allocation consulted after every step result, the
solve-step-by-step prompt, and how a reasoning step is told to end the solution."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scheduler_backend.allocation import AllocationPolicy, Verdict
from scheduler_backend.answers import extract_answer
from scheduler_backend.engine import ChatMessage, SamplingSpec
from scheduler_backend.program import ReasoningProgram, StopReason
from scheduler_backend.prompts import solve_messages

STEP_SEPARATOR = "\n\n"
# Appended to an unfinished solution to make the model state its answer now (Dynasor-CoT's probe):
# the answer then ends at the first unmatched `}` (answers.extract_probe_answer).
PROBE_SUFFIX = "\n\n... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
PROBE_SAMPLING = SamplingSpec(max_tokens=20, temperature=0.6, top_k=50)
# Formats with an explicit "this is the final answer" marker; a bare number ends nothing.
_MARKER_FORMATS = ("boxed", "gsm8k", "answer-is")


class PolicyProgram(ReasoningProgram):
    """A program whose stopping (beyond its cap and its natural end) is the policy's call."""

    def __init__(self, question: str, budget: int, policy: AllocationPolicy, prompt: str = "math"):
        super().__init__(question, budget)
        self.prompt = prompt
        self.allocate(policy)

    def allocate(self, policy: AllocationPolicy) -> None:
        """Judge this program by `policy` from now on, with a fresh allocation (trace recording
        swaps in a uniform one so that the trace sees every step)."""
        self.policy = policy
        self.allocation = policy.start(self.budget)

    def solve_messages(self, partial: str = "") -> tuple[ChatMessage, ...]:
        """The chat for this program's question in its prompt; a `partial` solution is continued."""
        return solve_messages(self.question, self.prompt, partial)

    def _consult(self, natural_end: bool = False, capped: bool | None = None) -> None:
        """A detection point: stop if the algorithm ended, the policy says so (not below
        `min_units`, the quality floor), or the cap is spent (`capped` overrides steps >= budget
        for programs still waiting on work that counts)."""
        if natural_end:
            self._finish(StopReason.FINISHED)
            return
        verdict = self.allocation.verdict(self.certaindex(), self.steps_used())
        if verdict is not Verdict.CONTINUE and self.steps_used() < self.min_units:
            verdict = Verdict.CONTINUE  # the answer must rest on the quality floor's units first
        if verdict is Verdict.SETTLED:
            self._finish(StopReason.SETTLED)
        elif verdict is Verdict.HOPELESS:
            self._finish(StopReason.HOPELESS)
        elif self.steps_used() >= self.budget if capped is None else capped:
            self._finish(StopReason.CAP)

    def limit_budget(self, units: int) -> int:
        """The allocation judges against the lowered budget too (its cap and job size)."""
        self.allocation.budget = super().limit_budget(units)
        return self.budget

    def predicted_remaining(self) -> float:
        if self.done:
            return 0.0
        return self.allocation.predicted_remaining(self.certaindex(), self.steps_used())


def sampling_from(options: Mapping[str, Any]) -> SamplingSpec:
    """The sampling options every program takes (max_tokens only where the program has it)."""
    return SamplingSpec(max_tokens=options.get("max_tokens", 1), temperature=options["temperature"],
                        top_p=options["top_p"], top_k=options["top_k"], min_tokens=options.get("min_tokens", 0))


def require_positive(**values: float) -> None:
    """Constructor checks whose messages name the field, as the registry's do."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: must be > 0, got {value}")


def sample_answer(text: str, finish_reason: str | None, fmt: str) -> str | None:
    """A sample cut off by its token limit has no final answer yet: in "auto" it counts only if it
    already stated one, never by its last number, which would be an intermediate result."""
    if fmt == "auto" and finish_reason == "length":
        return next((a for f in _MARKER_FORMATS if (a := extract_answer(text, f)) is not None), None)
    return extract_answer(text, fmt)


def ends_solution(step: str, finish_reason: str | None) -> bool:
    """A step ends the solution when it states a final answer, or when the model had nothing more
    to say (an empty step: the engine does not report whether EOS or the stop string ended it)."""
    if finish_reason == "stop" and not step.strip():
        return True
    return any(extract_answer(step, fmt) is not None for fmt in _MARKER_FORMATS)


def extend(partial: str, step: str, finish_reason: str | None) -> str:
    """The partial solution after `step`; a step cut by its stop string gets the separator back."""
    return partial + step + (STEP_SEPARATOR if finish_reason == "stop" else "")
