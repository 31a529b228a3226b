"""A deterministic Engine for unit tests: every sample's text comes from a script, so program and
scheduler behaviour can be asserted exactly, without a model. It behaves like the real engines
where programs can tell: stop strings cut the text (and are not returned), `max_tokens` truncates
with finish_reason "length", output streams in several deltas (with one {word: 0.0} top-logprob
map per word when asked), and abort ends the stream.
Tokens are whitespace-separated words.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence

from scheduler_backend.engine import EngineError, GenerateCall, SampleDelta

Script = Callable[[GenerateCall, int], str]
Scorer = Callable[[str, str], float]

_WORD = re.compile(r"\s*\S+")


def _tokens(text: str, max_tokens: int) -> tuple[list[str], str, str]:
    """One piece per token (leading whitespace kept), trailing whitespace, and the finish reason."""
    words = _WORD.findall(text)
    if len(words) > max_tokens:
        return words[:max_tokens], "", "length"
    return words, text[sum(len(w) for w in words):], "stop"


def _apply_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class ScriptedEngine:
    """`script(call, sample_index)` gives a sample's full text; `scorer(question, candidate)` a
    reward (0.5 when not given). `calls`, `aborted` and `score_calls` record what programs asked."""

    def __init__(self, script: Script, scorer: Scorer | None = None, *, delay_s: float = 0.0,
                 deltas_per_sample: int = 3):
        self.script = script
        self.scorer = scorer
        self.delay_s = delay_s
        self.deltas_per_sample = max(deltas_per_sample, 1)
        self.calls: list[GenerateCall] = []
        self.aborted: list[str] = []
        self.score_calls: list[tuple[str, tuple[str, ...]]] = []
        self._failing: set[str] = set()
        self.fail_scores = False
        self.closed = False

    def fail(self, request_id: str) -> None:
        """Make the call with this id raise EngineError when it starts."""
        self._failing.add(request_id)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        self.calls.append(call)
        if call.request_id in self._failing:
            raise EngineError(f"scripted failure of {call.request_id}")
        samples = []
        for i in range(call.sampling.n):
            text = _apply_stop(self.script(call, i), call.sampling.stop)
            samples.append(_tokens(text, call.sampling.max_tokens))
        rounds = self.deltas_per_sample
        for r in range(rounds):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if call.request_id in self.aborted:
                return
            batch = []
            last = r == rounds - 1
            for i, (words, tail, reason) in enumerate(samples):
                lo, hi = len(words) * r // rounds, len(words) * (r + 1) // rounds
                if hi > lo or last:
                    text = "".join(words[lo:hi]) + (tail if last else "")
                    tops = [{w: 0.0} for w in words[lo:hi]] if call.sampling.logprobs is not None else []
                    batch.append(SampleDelta(index=i, text=text, num_tokens=hi - lo, finished=last,
                                             finish_reason=reason if last else None, top_logprobs=tops))
            yield batch

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        self.score_calls.append((question, tuple(candidates)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_scores:
            raise EngineError("scripted scoring failure")
        return [self.scorer(question, c) if self.scorer else 0.5 for c in candidates]

    def shutdown(self) -> None:
        self.closed = True
