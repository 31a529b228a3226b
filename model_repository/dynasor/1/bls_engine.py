"""The scheduler_backend Engine over Triton BLS: `policy` for generation, `reward` for scores.

Decoupled BLS responses come from a blocking iterator (docs/PLATFORM.md pitfall 9), so each call is
drained on a thread of this engine's own pool and handed to the event loop through a queue.
Triton 2.51 cannot cancel a BLS request, so `abort` asks `policy` to abort the engine request by
its id; the stream then ends with a cancelled error, which this engine turns into a quiet end.
"""
from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from scheduler_backend.engine import EngineError, GenerateCall, SampleDelta

_END = object()
# One stub call at a time from this model's threads (BLS exec and response reads on draining
# threads, is_cancelled/send on the event loop). A precaution only: under many decoupled BLS calls
# the 2.51 stub still corrupted its heap with it in place, which is why `engine` defaults to grpc.
STUB_LOCK = threading.Lock()


class _ResponseError(str):
    """An error response's message, as read on the draining thread."""


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class BlsEngine:
    def __init__(self, policy_model: str = "policy", reward_model: str = "reward", max_concurrent_calls: int = 256):
        self.policy_model = policy_model
        self.reward_model = reward_model
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_calls, thread_name_prefix="dynasor-bls")
        self._aborted: set[str] = set()
        self._active: set[str] = set()

    def _policy_request(self, call: GenerateCall) -> "pb_utils.InferenceRequest":
        inputs = [pb_utils.Tensor(name, _strings([value])) for name, value in call.policy_text_inputs().items()]
        inputs += [
            pb_utils.Tensor("stream", np.array([True], dtype=np.bool_)),
            pb_utils.Tensor("priority", np.array([call.priority], dtype=np.int32)),
        ]
        return pb_utils.InferenceRequest(
            model_name=self.policy_model,
            inputs=inputs,
            request_id=call.request_id,
            requested_output_names=["text_output", "sample_index", "num_output_tokens", "finish_reason", "cumulative_logprob"]
            + (["logprobs"] if call.sampling.logprobs is not None else []),
        )

    def _drain(self, call: GenerateCall, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        """Builds, runs and reads the BLS call on this thread and hands only plain Python objects
        to the loop: Triton objects never cross threads (the stub has crashed where they did).
        The request stays active until `policy` ends its stream, however early the consumer
        stopped listening: that is what lets `abort` reach it."""
        try:
            with STUB_LOCK:
                responses = iter(self._policy_request(call).exec(decoupled=True))
            for response in responses:
                with STUB_LOCK:
                    item = _ResponseError(response.error().message()) if response.has_error() else _deltas(response)
                    del response
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except Exception as e:  # handed to the awaiting coroutine, raised there
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            self._active.discard(call.request_id)
            self._aborted.discard(call.request_id)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._active.add(call.request_id)
        self._pool.submit(self._drain, call, loop, queue)
        while (item := await queue.get()) is not _END:
            if isinstance(item, _ResponseError):
                if call.request_id in self._aborted:
                    continue
                raise EngineError(f"policy: {item}")
            if isinstance(item, Exception):
                raise EngineError(f"policy call failed: {item}")
            if item:
                yield item

    def _send_abort(self, request_id: str) -> bool:
        with STUB_LOCK:
            responses = iter(pb_utils.InferenceRequest(
                model_name=self.policy_model,
                inputs=[pb_utils.Tensor("abort_request_ids", _strings([request_id]))],
                requested_output_names=["finish_reason"],
            ).exec(decoupled=True))
        aborted = False
        for response in responses:
            with STUB_LOCK:
                tensor = None if response.has_error() else pb_utils.get_output_tensor_by_name(response, "finish_reason")
                aborted = aborted or (tensor is not None and tensor.as_numpy().reshape(-1)[0] == b"aborted")
                del response, tensor
        return aborted

    async def abort(self, request_id: str) -> None:
        """Retries while `policy` does not know the id yet: the abort can overtake the request."""
        self._aborted.add(request_id)
        loop = asyncio.get_running_loop()
        for _ in range(40):
            if request_id not in self._active:
                self._aborted.discard(request_id)
                return
            if await loop.run_in_executor(self._pool, self._send_abort, request_id):
                return
            await asyncio.sleep(0.05)

    def _score(self, question: str, candidates: list[str]) -> list[float]:
        with STUB_LOCK:
            responses = iter(pb_utils.InferenceRequest(
                model_name=self.reward_model,
                inputs=[pb_utils.Tensor("question", _strings([question])), pb_utils.Tensor("candidates", _strings(candidates))],
                requested_output_names=["scores"],
            ).exec(decoupled=True))
        scores, error = None, None
        for response in responses:
            with STUB_LOCK:
                if response.has_error():
                    error = response.error().message()
                elif (tensor := pb_utils.get_output_tensor_by_name(response, "scores")) is not None:
                    scores = [float(x) for x in tensor.as_numpy().reshape(-1)]
                    del tensor
                del response
        if error is not None:
            raise EngineError(f"reward: {error}")
        if scores is None:
            raise EngineError("reward: no scores in the response")
        return scores

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._score, question, list(candidates))

    def shutdown(self) -> None:
        """Waits for the draining threads (their streams end once their programs are cancelled):
        a stub torn down under running BLS threads has crashed on exit."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _deltas(response) -> list[SampleDelta]:
    def out(name):
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        return None if tensor is None else tensor.as_numpy().reshape(-1)

    texts = out("text_output")
    if texts is None:
        return []
    index, tokens, finish, logprob = out("sample_index"), out("num_output_tokens"), out("finish_reason"), out("cumulative_logprob")
    tops = out("logprobs")
    deltas = []
    for i, text in enumerate(texts):
        reason = finish[i].decode() if finish is not None else ""
        deltas.append(
            SampleDelta(
                index=int(index[i]),
                text=text.decode("utf-8", errors="replace"),
                num_tokens=int(tokens[i]),
                finished=bool(reason),
                finish_reason=reason or None,
                cumulative_logprob=None if logprob is None or np.isnan(logprob[i]) else float(logprob[i]),
                top_logprobs=json.loads(tops[i]) if tops is not None else [],
            )
        )
    return deltas
