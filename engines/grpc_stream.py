"""One decoupled call over tritonclient's gRPC stream, as a plain iterator of responses.

Decoupled models answer only on the stream (docs/PLATFORM.md pitfall 10). Each `StreamCall` owns one
stream, so calls on separate threads never mix their responses, and closing it cancels the call on
the server.
"""
from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def as_input(name: str, value: Any) -> grpcclient.InferInput:
    """str/bytes -> BYTES, bool -> BOOL, int -> INT32, float -> FP32, lists/arrays as given."""
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, bytes)) for v in value):
        arr = np.array([v.encode() if isinstance(v, str) else v for v in value], dtype=np.object_)
    elif isinstance(value, (str, bytes)):
        arr = np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_)
    elif isinstance(value, bool):
        arr = np.array([value], dtype=np.bool_)
    elif isinstance(value, int):
        arr = np.array([value], dtype=np.int32)
    elif isinstance(value, float):
        arr = np.array([value], dtype=np.float32)
    else:
        raise TypeError(f"{name}: cannot send a {type(value).__name__}")
    inp = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    inp.set_data_from_numpy(arr)
    return inp


@dataclass
class Response:
    outputs: dict[str, np.ndarray]
    final: bool


class StreamError(RuntimeError):
    """The server answered the call with an error; the message is the server's, `status` its gRPC
    status name (UNAVAILABLE, INVALID_ARGUMENT, ...; "" when unknown)."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


def status_name(error: Any) -> str:
    """tritonclient's status ("StatusCode.UNAVAILABLE") as the bare name."""
    status = error.status() if isinstance(error, InferenceServerException) else None
    return str(status or "").rpartition(".")[2]


class StreamCall:
    """A single streamed request; iterate for its responses, `close()` to cancel it."""

    def __init__(self, url: str, model: str, inputs: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
                 request_id: str = "", timeout_s: float = 600.0, headers: Mapping[str, str] | None = None):
        self._client = grpcclient.InferenceServerClient(url)
        self._queue: queue.Queue = queue.Queue()
        self._timeout = timeout_s
        self._done = False
        self._client.start_stream(callback=lambda result, error: self._queue.put((result, error)), headers=dict(headers or {}))
        try:
            self._client.async_stream_infer(
                model,
                [as_input(k, v) for k, v in inputs.items()],
                request_id=request_id,
                parameters=dict(parameters or {}),
                enable_empty_final_response=True,
            )
        except InferenceServerException as e:
            # The stream broke before the request went out (a proxy with no server in service
            # answers at once): the callback has queued the stream's own error, status and all,
            # for iteration to raise; if not, this one is raised there.
            if self._queue.empty():
                self._queue.put((None, e))

    def __iter__(self) -> Iterator[Response]:
        try:
            while not self._done:
                try:
                    result, error = self._queue.get(timeout=self._timeout)
                except queue.Empty:
                    raise TimeoutError(f"no response within {self._timeout:.0f} s") from None
                if error is not None:
                    self._done = True
                    raise StreamError(error.message() if isinstance(error, InferenceServerException) else str(error), status_name(error))
                params = result.get_response().parameters
                final = params["triton_final_response"].bool_param if "triton_final_response" in params else True
                names = [o.name for o in result.get_response().outputs]
                self._done = final
                yield Response({n: result.as_numpy(n) for n in names}, final)
        finally:
            if self._done:
                self.close()

    def close(self) -> None:
        """Ends the stream; a call still running is cancelled on the server."""
        self._done = True
        self._client.stop_stream(cancel_requests=True)
        self._client.close()

    def collect(self) -> list[Response]:
        return list(self)
