"""The scheduler_backend Engine over the `policy` model from outside the server (gRPC streams):
how a user runs reasoning programs client-side today, and the baseline `bench_dynasor` measures
the in-server `dynasor` model against. Each call owns one stream, drained on a thread."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Sequence

from engines.grpc_stream import StreamCall, StreamError
from scheduler_backend.engine import EngineError, GenerateCall, SampleDelta

_END = object()


class GrpcPolicyEngine:
    def __init__(self, url: str, max_concurrent_calls: int = 256):
        self.url = url
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_calls, thread_name_prefix="policy-grpc")
        self._calls: dict[str, StreamCall] = {}

    def _inputs(self, call: GenerateCall) -> dict:
        return {**call.policy_text_inputs(), "stream": True, "priority": call.priority}

    def _drain(self, call: GenerateCall, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        try:
            stream = StreamCall(self.url, "policy", self._inputs(call), request_id=call.request_id)
            self._calls[call.request_id] = stream
            for response in stream:
                if "text_output" in response.outputs:
                    loop.call_soon_threadsafe(queue.put_nowait, response.outputs)
        except (StreamError, TimeoutError, OSError) as e:
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            self._calls.pop(call.request_id, None)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._pool.submit(self._drain, call, loop, queue)
        while (item := await queue.get()) is not _END:
            if isinstance(item, Exception):
                raise EngineError(f"policy: {item}")
            yield [
                SampleDelta(index=int(i), text=t.decode("utf-8", errors="replace"), num_tokens=int(n),
                            finished=bool(f), finish_reason=f.decode() or None)
                for i, t, n, f in zip(item["sample_index"], item["text_output"], item["num_output_tokens"], item["finish_reason"])
            ]

    async def abort(self, request_id: str) -> None:
        stream = self._calls.pop(request_id, None)
        if stream is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, stream.close)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        def call() -> list[float]:
            responses = StreamCall(self.url, "reward", {"question": question, "candidates": list(candidates)}).collect()
            return [float(x) for r in responses if "scores" in r.outputs for x in r.outputs["scores"]]

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
