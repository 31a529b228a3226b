"""The Engine over the `policy` and `reward` models through Triton's gRPC stream: what `dynasor`
uses by default (its own server's endpoint on loopback), and how a user runs reasoning programs
client-side (the baseline `bench_dynasor` measures). Each call owns one stream, read by the shared
drain on a thread of this engine's pool."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from engines.grpc_stream import StreamCall
from engines.policy_stream import decode_deltas, drain, policy_inputs
from scheduler_backend.engine import EngineError, GenerateCall, SampleDelta


class GrpcPolicyEngine:
    def __init__(self, url: str, max_concurrent_calls: int = 256):
        self.url = url
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_calls, thread_name_prefix="policy-grpc")
        self._calls: dict[str, StreamCall] = {}

    def _responses(self, call: GenerateCall) -> Iterator[list[SampleDelta]]:
        stream = StreamCall(self.url, "policy", policy_inputs(call), request_id=call.request_id)
        self._calls[call.request_id] = stream
        try:
            for response in stream:
                yield decode_deltas(response.outputs)
        finally:
            self._calls.pop(call.request_id, None)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        try:
            async for deltas in drain(self._pool, lambda: self._responses(call)):
                if deltas:
                    yield deltas
        except Exception as e:
            raise EngineError(f"policy: {e}") from e

    async def abort(self, request_id: str) -> None:
        stream = self._calls.pop(request_id, None)
        if stream is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, stream.close)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        def call() -> list[float]:
            responses = StreamCall(self.url, "reward", {"question": question, "candidates": list(candidates)}).collect()
            return [float(x) for r in responses if "scores" in r.outputs for x in r.outputs["scores"]]

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except Exception as e:
            raise EngineError(f"reward: {e}") from e

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
