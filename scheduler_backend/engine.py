"""The engine interface every driver of the programs talks to.

The server (Triton BLS to `policy`/`reward`), the direct vLLM engine (traces, benchmarks) and the
scripted engine (unit tests) all implement it, so the programs and the scheduler never know which
one runs them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, Sequence


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingSpec:
    """The subset of vLLM SamplingParams the programs use; engines translate it."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.95
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None


@dataclass(frozen=True)
class GenerateCall:
    """One engine request. `messages` get the model's chat template; a final assistant message is
    continued rather than closed (used to probe an unfinished chain of thought). `prompt` is raw
    text and is used when `messages` is empty."""

    request_id: str
    sampling: SamplingSpec
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    priority: int = 0

    def policy_text_inputs(self) -> dict[str, str]:
        """The `policy` model's text inputs for this call (sampling_parameters, and messages or
        text_input), shared by every engine that reaches `policy` through Triton."""
        s = self.sampling
        sampling: dict = {"n": s.n, "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
        if s.stop:
            sampling["stop"] = list(s.stop)
        if s.logprobs is not None:
            sampling["logprobs"] = s.logprobs
        inputs = {"sampling_parameters": json.dumps(sampling)}
        if self.messages:
            inputs["messages"] = json.dumps([{"role": m.role, "content": m.content} for m in self.messages])
        else:
            inputs["text_input"] = self.prompt
        return inputs


@dataclass
class SampleDelta:
    """New output of one of the n samples of a call since its previous delta."""

    index: int
    text: str
    num_tokens: int
    finished: bool = False
    finish_reason: str | None = None
    cumulative_logprob: float | None = None
    top_logprobs: list[dict[str, float]] = field(default_factory=list)


class EngineError(RuntimeError):
    """The engine failed a call (dead engine, refused request); the program decides what follows."""


class Engine(Protocol):
    def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        """Stream deltas until every sample of the call has finished."""
        ...

    async def abort(self, request_id: str) -> None:
        """Free the engine request at once; the generate stream then ends."""
        ...

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        """Reward in [0, 1] per candidate (partial) solution of `question`."""
        ...
