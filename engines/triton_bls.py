"""The Engine over Triton BLS, for a model inside the server: `policy` generates, `reward` scores.

Decoupled BLS responses come from a blocking iterator (docs/PLATFORM.md pitfall 9), so each call is
read by the shared drain on a thread of this engine's own pool. Triton 2.51 cannot cancel a BLS request, so `abort` asks `policy` to abort the engine request by
its id; the stream then ends with a cancelled error, which this engine turns into a quiet end.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from engines.policy_stream import decode_deltas, drain, policy_inputs, policy_outputs
from scheduler_backend.engine import EngineError, GenerateCall, SampleDelta

# One stub call at a time from this model's threads (BLS exec and response reads on draining
# threads, is_cancelled/send on the event loop). A precaution only: under many decoupled BLS calls
# the 2.51 stub still corrupted its heap with it in place, which is why `engine` defaults to grpc.
STUB_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Refused:
    """An error response's message, read on the draining thread, and whether the call had been
    aborted by then (an aborted call ends quietly)."""

    message: str
    after_abort: bool


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


def _tensor(value: Any) -> np.ndarray:
    """A `policy_inputs` value as the tensor `policy` declares: STRING, BOOL or INT32."""
    if isinstance(value, bool):
        return np.array([value], dtype=np.bool_)
    if isinstance(value, int):
        return np.array([value], dtype=np.int32)
    return _strings([value])


class BlsEngine:
    def __init__(self, policy_model: str = "policy", reward_model: str = "reward", max_concurrent_calls: int = 256):
        self.policy_model = policy_model
        self.reward_model = reward_model
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_calls, thread_name_prefix="dynasor-bls")
        self._aborted: set[str] = set()
        self._active: set[str] = set()

    def _policy_request(self, call: GenerateCall) -> pb_utils.InferenceRequest:
        inputs = [pb_utils.Tensor(name, _tensor(value)) for name, value in policy_inputs(call).items()]
        return pb_utils.InferenceRequest(model_name=self.policy_model, inputs=inputs, request_id=call.request_id,
                                         requested_output_names=policy_outputs(call))

    def _responses(self, call: GenerateCall) -> Iterator[list[SampleDelta] | _Refused]:
        """Builds, runs and reads the BLS call on the draining thread and yields only plain Python
        objects: Triton objects never cross threads (the stub has crashed where they did). The
        request stays active until `policy` ends its stream: that is what lets `abort` reach it."""
        names = policy_outputs(call)
        try:
            with STUB_LOCK:
                responses = iter(self._policy_request(call).exec(decoupled=True))
            for response in responses:
                with STUB_LOCK:
                    if response.has_error():
                        item: list[SampleDelta] | _Refused = _Refused(response.error().message(), call.request_id in self._aborted)
                    else:
                        item = decode_deltas(_outputs(response, names))
                    del response
                yield item
        finally:
            self._active.discard(call.request_id)
            self._aborted.discard(call.request_id)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        self._active.add(call.request_id)
        try:
            async for item in drain(self._pool, lambda: self._responses(call)):
                if isinstance(item, _Refused):
                    if item.after_abort:
                        continue
                    raise EngineError(f"policy: {item.message}")
                if item:
                    yield item
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"policy call failed: {e}") from e

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


def _outputs(response: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named output tensors of a BLS response as numpy arrays (absent ones left out)."""
    tensors = {name: pb_utils.get_output_tensor_by_name(response, name) for name in names}
    return {name: t.as_numpy() for name, t in tensors.items() if t is not None}
