"""Long chain of thought with probing (Dynasor-CoT): decode the thought in chunks and, after each
chunk, ask the model for its answer so far by appending a sentence that announces the final answer
and opens `\\boxed{`. When the last `window` probes agree and none of them hedges, the thought has
converged and the rest of it would be spent on checking: stop and return the probed answer.

Each chunk's probe runs concurrently with the next chunk, so probing adds no latency to the thought;
a probe that finishes after later chunks still counts, in chunk order.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from scheduler_backend.allocation import AllocationPolicy
from scheduler_backend.answers import extract_answer, extract_probe_answer
from scheduler_backend.certaindex import is_hedging, probe_certaindex
from scheduler_backend.engine import ChatMessage, SamplingSpec
from scheduler_backend.program import GenerateStep, Step, StepResult
from scheduler_backend.programs.base import PROBE_SAMPLING, PROBE_SUFFIX, PolicyProgram, require_positive, sampling_from

# (window, chunk_tokens) per effort level, as in hao-ai-lab/Dynasor.
EFFORTS: dict[str, tuple[int, int]] = {
    "mild": (8, 64), "low": (5, 64), "mid": (3, 64), "high": (2, 64), "crazy": (2, 32),
}


class CotProbe(PolicyProgram):
    """Knob: chunks of thought; `budget` is the most chunks. Certaindex is the agreement of the last
    `window` probe answers, and 0 while any of those probes hedges."""

    name = "cot-probe"

    def __init__(self, question: str, budget: int, policy: AllocationPolicy, *, sampling: SamplingSpec,
                 window: int = 3, chunk_tokens: int = 64, answer_format: str = "auto"):
        super().__init__(question, budget, policy)
        require_positive(window=window, chunk_tokens=chunk_tokens)
        self.chunk_sampling = replace(sampling, n=1, max_tokens=chunk_tokens, stop=())
        self.window = window
        self.answer_format = answer_format
        self.thought = ""
        self.thought_ended = False
        self.chunks = 0  # received
        self.probes: dict[int, tuple[str | None, str]] = {}  # chunk index -> (answer, probe text)
        self.chunk_tokens: list[int] = []  # each chunk's tokens, and each probe's: a replay's costs
        self.probe_tokens: dict[int, int] = {}
        self._chunk_waiting = False
        self._probe_due = False  # the latest chunk's probe is still to be issued
        self._probes_waiting: set[int] = set()

    @classmethod
    def from_options(cls, question: str, o: Mapping[str, Any], policy: AllocationPolicy) -> CotProbe:
        """From registry-validated options; explicit window/chunk_tokens override the effort preset."""
        window, chunk_tokens = EFFORTS[o["effort"]]
        return cls(question, o["budget"], policy, sampling=sampling_from(o), window=o["window"] or window,
                   chunk_tokens=o["chunk_tokens"] or chunk_tokens, answer_format=o["answer_format"])

    def next_steps(self) -> list[Step]:
        if self.done:
            return []
        steps: list[Step] = []
        if not self._chunk_waiting and not self.thought_ended and self.chunks < self.budget:
            self._chunk_waiting = True
            steps.append(GenerateStep(f"chunk{self.chunks}", self.chunk_sampling, self._messages(self.thought)))
        if self._probe_due:  # the thought is still the one the latest chunk left
            self._probe_due = False
            self._probes_waiting.add(self.chunks - 1)
            probe = self._messages(self.thought + PROBE_SUFFIX)
            steps.append(GenerateStep(f"probe{self.chunks - 1}", PROBE_SAMPLING, probe))
        return steps

    def _messages(self, assistant: str) -> tuple[ChatMessage, ...]:
        user = ChatMessage("user", self.question)
        return (user, ChatMessage("assistant", assistant)) if assistant else (user,)

    def _absorb(self, result: StepResult) -> None:
        sample = result.samples[0] if result.samples else None
        if result.key.startswith("chunk"):
            self._chunk_waiting = False
            self.thought += sample.text if sample else ""
            self.chunk_tokens.append(result.num_tokens)
            self.chunks += 1
            if sample is not None and sample.finish_reason == "stop":
                self.thought_ended = True
                self._consult(natural_end=True)
                return
            self._probe_due = True
        else:
            i = int(result.key[len("probe"):])
            self._probes_waiting.discard(i)
            text = sample.text if sample else ""
            self.probes[i] = (extract_probe_answer(text), text)
            self.probe_tokens[i] = result.num_tokens
            self._consult(capped=self.chunks >= self.budget and not self._probes_waiting and not self._probe_due)

    def _window(self) -> list[tuple[str | None, str]]:
        return [self.probes[i] for i in sorted(self.probes)][-self.window:]

    def certaindex(self) -> float:
        window = self._window()
        if any(is_hedging(text) for _, text in window):
            return 0.0
        return probe_certaindex([a for a, _ in window], self.window)

    def best_answer(self) -> str | None:
        if self.thought_ended and (answer := extract_answer(self.thought, self.answer_format)) is not None:
            return answer
        return next((a for i in sorted(self.probes, reverse=True) if (a := self.probes[i][0]) is not None), None)

    def steps_used(self) -> int:
        return self.chunks

    def units_committed(self) -> int:
        return self.chunks + self._chunk_waiting

    def extra_state(self) -> dict[str, Any]:
        order = sorted(self.probes)
        return {
            "probes": [self.probes[i][0] for i in order],
            "hedging": any(is_hedging(text) for _, text in self._window()),
            "hedges": [is_hedging(self.probes[i][1]) for i in order],
            "probe_tokens": [self.probe_tokens[i] for i in order],
            "chunk_tokens": list(self.chunk_tokens),
            "thought_ended": self.thought_ended,
            "thought": self.thought,  # so far: clients stream it as it grows (reasoning_content)
        }
