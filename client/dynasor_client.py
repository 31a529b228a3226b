"""Python client of the `dynasor` model: one call = one reasoning program, with live progress.

Transports: gRPC streaming (tritonclient) and HTTP `generate_stream` (server-sent events), each
sync and asyncio. Every response of the model is a `Progress`; the last one (final) carries why the
program stopped.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.grpc_stream import StreamCall, StreamError, as_input
from scheduler_backend.errors import RETRY_ELSEWHERE

MODEL = "dynasor"


@dataclass
class Progress:
    answer: str | None
    certaindex: float
    final: bool
    stop_reason: str
    tokens_used: int
    steps: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> int | None:
        return self.details.get("budget")

    @property
    def latency_s(self) -> float | None:
        return self.details.get("latency_s")

    @property
    def program_id(self) -> str | None:
        """The server's id for this program: what `cancel()` takes."""
        return self.details.get("program_id")

    @classmethod
    def from_outputs(cls, out: Mapping[str, Any]) -> Progress:
        def scalar(name, default=None):
            value = out.get(name)
            if value is None:
                return default
            item = np.asarray(value).reshape(-1)[0] if not isinstance(value, (str, int, float, bool)) else value
            return item.decode() if isinstance(item, bytes) else item.item() if hasattr(item, "item") else item

        answer = scalar("answer", "")
        return cls(
            answer=answer or None,
            certaindex=float(scalar("certaindex", 0.0)),
            final=bool(scalar("final", False)),
            stop_reason=scalar("stop_reason", "") or "",
            tokens_used=int(scalar("tokens_used", 0)),
            steps=int(scalar("steps", 0)),
            details=json.loads(scalar("progress", "{}") or "{}"),
        )


class ProgramError(RuntimeError):
    """The server refused or failed the program; the message names the field when it was the input.
    `status`: the gRPC status name (UNAVAILABLE for a busy, draining or unreachable server; HTTP
    503/502/504 are read as UNAVAILABLE), "" when unknown."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


# Worth sending again elsewhere when the program streamed nothing: the server (or the proxy in
# front of it) did not take the program, or lost it before it ran.
RESUBMITTABLE = frozenset({"UNAVAILABLE"})


def resubmittable(error: ProgramError) -> bool:
    """The stream failed UNAVAILABLE (proxy or connection), or the server refused the program for
    a reason another replica may not have (busy, draining): Triton's gRPC stream carries the
    message of a model's error but not its status."""
    return error.status in RESUBMITTABLE or RETRY_ELSEWHERE in str(error)


def request_inputs(question: str, program: str | None, options: Mapping[str, Any] | None) -> dict[str, str]:
    inputs = {"text_input": question}
    if program:
        inputs["program"] = program
    if options:
        inputs["options"] = json.dumps(dict(options))
    return inputs


def _final(last: Progress | None) -> Progress:
    if last is None or not last.final:
        raise ProgramError("the server closed the stream without a final response")
    return last


def _to_final(stream: Iterator[Progress], on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """Every response to `on_progress`; the final one returned."""
    last = None
    for p in stream:
        if on_progress:
            on_progress(p)
        last = p
    return _final(last)


class _Connection:
    """`url` is host:port of gRPC (protocol="grpc") or HTTP (protocol="http")."""

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 900.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol: must be 'grpc' or 'http', got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s


class DynasorClient(_Connection):
    """Sync client."""

    def stream(self, question: str, program: str | None = None, options: Mapping[str, Any] | None = None,
               resubmit: int = 0) -> Iterator[Progress]:
        """The program's progress as it streams. `resubmit`: how many times to send it again when it
        failed UNAVAILABLE before streaming anything (a busy or draining replica refused it, or
        its replica was lost before it ran; behind a proxy the next try goes to another replica).
        A program that streamed progress is never resubmitted: it ran, and its error is final.
        The final response's `details["resubmissions"]` says how many were needed."""
        attempt = 0
        while True:
            streamed = False
            try:
                for p in self._stream_once(question, program, options):
                    streamed = True
                    if p.final:
                        p.details["resubmissions"] = attempt
                    yield p
                return
            except ProgramError as e:
                if streamed or not resubmittable(e) or attempt == resubmit:
                    if attempt:
                        raise ProgramError(f"{e} (after {attempt} resubmissions)", e.status) from None
                    raise
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
            attempt += 1

    def _stream_once(self, question: str, program: str | None, options: Mapping[str, Any] | None) -> Iterator[Progress]:
        inputs = request_inputs(question, program, options)
        if self.protocol == "http":
            yield from _http_stream(self.url, inputs, self.timeout_s)
            return
        yield from self._grpc_progress(StreamCall(self.url, MODEL, inputs, request_id=uuid.uuid4().hex, timeout_s=self.timeout_s))

    def cancel(self, program_id: str) -> Progress:
        """Stop a program by its id, from any connection: how an HTTP client cancels (closing a
        gRPC stream cancels by itself)."""
        return _to_final(self._control({"cancel_program": program_id}))

    def drain(self, grace_s: float, on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Drain the server: it admits no new programs, lets those in flight finish within `grace_s`
        seconds and then stops the rest with their best answers so far. Returns once none is left
        (a preStop hook waits on this); progress `details` carry programs_in_flight and grace_left_s."""
        return _to_final(self._control({"drain": float(grace_s)}), on_progress)

    def _control(self, parameters: Mapping[str, Any]) -> Iterator[Progress]:
        """A request to the `dynasor` model that runs no program (cancel, drain): its responses."""
        inputs = {"text_input": ""}
        if self.protocol == "http":
            return _http_stream(self.url, {**inputs, **parameters}, self.timeout_s)
        return self._grpc_progress(StreamCall(self.url, MODEL, inputs, parameters=dict(parameters), timeout_s=self.timeout_s))

    @staticmethod
    def _grpc_progress(call: StreamCall) -> Iterator[Progress]:
        try:
            for response in call:
                if "answer" in response.outputs:
                    yield Progress.from_outputs(response.outputs)
        except StreamError as e:
            if e.status:  # the stream itself failed (a model's errors carry no status): say so
                raise ProgramError(f"the stream to the server failed ({e.status}): {e}", e.status) from None
            raise ProgramError(str(e), e.status) from None
        except RuntimeError as e:
            raise ProgramError(str(e)) from None
        finally:
            call.close()

    def solve(self, question: str, program: str | None = None, options: Mapping[str, Any] | None = None,
              on_progress: Callable[[Progress], None] | None = None, resubmit: int = 0) -> Progress:
        """Run a program to its final response (`resubmit` as for `stream`)."""
        return _to_final(self.stream(question, program, options, resubmit), on_progress)


def _http_stream(url: str, inputs: Mapping[str, Any], timeout_s: float) -> Iterator[Progress]:
    import requests

    with requests.post(f"http://{url}/v2/models/{MODEL}/generate_stream", json=dict(inputs), stream=True, timeout=timeout_s) as r:
        if r.status_code != 200:
            raise ProgramError(_http_error(r.text), "UNAVAILABLE" if r.status_code in (502, 503, 504) else "")
        for raw in r.iter_lines(decode_unicode=True):
            line = raw.decode() if isinstance(raw, bytes) else raw
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if "error" in event:
                raise ProgramError(event["error"])
            if "answer" in event:
                yield Progress.from_outputs(event)


def _http_error(body: str) -> str:
    try:
        return json.loads(body).get("error", body)
    except json.JSONDecodeError:
        return body


async def aio_stream(url: str, model: str, inputs: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
                     timeout_s: float = 900.0, client: Any = None) -> AsyncGenerator[dict[str, Any], None]:
    """One decoupled gRPC stream through tritonclient.grpc.aio: each response's outputs by name,
    until the final flag. An error response raises ProgramError with its message. Closing the
    iterator early closes the stream, which cancels the request on the server. `client`: an open
    `InferenceServerClient` to share (many streams on one channel; the caller closes it), else one
    of its own for this stream."""
    import tritonclient.grpc.aio as aio

    own = client is None
    client = aio.InferenceServerClient(url) if own else client

    async def requests():
        yield {"model_name": model, "inputs": [as_input(k, v) for k, v in inputs.items()], "request_id": uuid.uuid4().hex,
               "enable_empty_final_response": True, "parameters": dict(parameters or {})}

    try:
        async for result, error in client.stream_infer(requests(), stream_timeout=timeout_s):
            if error is not None:
                raise ProgramError(str(error.message() if hasattr(error, "message") else error))
            names = [o.name for o in result.get_response().outputs]
            if names:
                yield {n: result.as_numpy(n) for n in names}
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
    finally:
        if own:
            await client.close()


class AsyncDynasorClient(_Connection):
    """asyncio client: gRPC through tritonclient.grpc.aio, HTTP through aiohttp."""

    async def stream(self, question: str, program: str | None = None, options: Mapping[str, Any] | None = None,
                     parameters: Mapping[str, Any] | None = None) -> AsyncGenerator[Progress, None]:
        """`parameters`: request parameters beside the inputs (`client_id`, gRPC only)."""
        inputs = request_inputs(question, program, options)
        if self.protocol == "http":
            async for p in _aio_http_stream(self.url, {**inputs, **(parameters or {})}, self.timeout_s):
                yield p
            return
        async with aclosing(aio_stream(self.url, MODEL, inputs, parameters, self.timeout_s)) as responses:
            async for outputs in responses:
                if "answer" in outputs:
                    yield Progress.from_outputs(outputs)

    async def solve(self, question: str, program: str | None = None, options: Mapping[str, Any] | None = None,
                    on_progress: Callable[[Progress], None] | None = None) -> Progress:
        last = None
        async for p in self.stream(question, program, options):
            if on_progress:
                on_progress(p)
            last = p
        return _final(last)


async def _aio_http_stream(url: str, inputs: Mapping[str, str], timeout_s: float) -> AsyncIterator[Progress]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"http://{url}/v2/models/{MODEL}/generate_stream", json=dict(inputs)) as r:
            if r.status != 200:
                raise ProgramError(_http_error(await r.text()))
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[len("data:"):])
                if "error" in event:
                    raise ProgramError(event["error"])
                if "answer" in event:
                    yield Progress.from_outputs(event)
