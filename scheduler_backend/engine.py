"""The engine interface every driver of the programs talks to.

The engines in `engines/` implement it (Triton gRPC and BLS to `policy`/`reward` for the server,
the direct vLLM engine for traces, the scripted engine for unit tests), so the programs and the
scheduler never know which one runs them; tests/engine_contract.py checks each against it.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingSpec:
    """The subset of vLLM SamplingParams the programs use; engines translate it."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    min_tokens: int = 0  # tokens before EOS or a stop string may end a sample
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

    def shutdown(self) -> None:
        """Release the engine's threads and connections; no call is made after it."""
        ...
