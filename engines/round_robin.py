"""Engine calls spread over several engines request by request, round-robin: what a balancer that
does not know programs does in front of engine replicas. Each generate call goes to the next
engine, so the calls of one program (its rounds, its probes) land on different engines and none
finds the prompt prefix an earlier call left in another engine's cache. The simulator's
`per-request` balancer (loadtest/simulator.py) puts one runner and scheduler in front of it, to
weigh that against keeping each program on one replica."""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from scheduler_backend.engine import Engine, EngineError, GenerateCall, SampleDelta


class RoundRobinEngine:
    """The Engine protocol over `engines`: generate calls and scores in turn; an abort goes to the
    engine that holds the request."""

    def __init__(self, engines: Sequence[Engine]):
        if not engines:
            raise ValueError("engines: need at least one")
        self.engines = list(engines)
        self._turn = 0
        self._holder: dict[str, Engine] = {}

    def _next(self) -> Engine:
        engine = self.engines[self._turn % len(self.engines)]
        self._turn += 1
        return engine

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        if call.request_id in self._holder:
            raise EngineError(f"round-robin engine: request id {call.request_id!r} is already running")
        engine = self._holder[call.request_id] = self._next()
        stream = engine.generate(call)
        try:
            async for deltas in stream:
                yield deltas
        finally:
            del self._holder[call.request_id]
            close = getattr(stream, "aclose", None)  # an engine's stream closed early frees its request
            if close is not None:
                await close()

    async def abort(self, request_id: str) -> None:
        engine = self._holder.get(request_id)
        if engine is not None:
            await engine.abort(request_id)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        return await self._next().score(question, candidates)

    def shutdown(self) -> None:
        for engine in self.engines:
            engine.shutdown()
