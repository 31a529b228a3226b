"""An OpenAI-compatible HTTP front for a running Triton server with this model repository:
`/v1/models`, `/v1/chat/completions` and `/v1/completions`, streamed (server-sent events) or not.
Each request becomes one `dynasor` program (or, for model `policy`, one plain engine request) over
tritonclient's asyncio gRPC stream; frontends/openai_api.py says how the fields map.

A client that goes away cancels its program: the gRPC stream is closed, which the server treats as
a cancel and frees every engine request the program holds.

Run: `dynasor openai --triton 127.0.0.1:8001 --port 9000` (or `dynasor serve --openai-port 9000`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from client.dynasor_client import AsyncDynasorClient, ProgramError, Progress, aio_stream
from frontends.openai_api import (
    PLAIN,
    ApiError,
    ProgramCall,
    chat_call,
    chat_response,
    chunk,
    completion_call,
    completion_response,
    content_of,
    facts,
    model_list,
    new_id,
    server_error,
)

FIRST_RESPONSE_S = 1.0  # a stream waits this long for a refusal before it commits to HTTP 200
DISCONNECT_POLL_S = 0.25


async def _read_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body: expected a JSON object")
    return body


class Events:
    """What one request streams, the same for programs and plain chat: (kind, value) with kind
    "progress" (a Progress), "reasoning" (new chain-of-thought text), "content" (answer text) and
    "final" (the last Progress, or the token count of plain chat)."""

    def __init__(self, triton: str, call: ProgramCall, timeout_s: float):
        self.triton, self.call, self.timeout_s = triton, call, timeout_s

    async def __aiter__(self) -> AsyncGenerator[tuple[str, Any], None]:
        params = {"client_id": self.call.client_id} if self.call.client_id else {}
        try:
            if self.call.program is None:
                async for event in self._plain(params):
                    yield event
                return
            client = AsyncDynasorClient(self.triton, timeout_s=self.timeout_s)
            thought = ""
            async with aclosing(client.stream(self.call.question, self.call.program, self.call.options, params)) as progress:
                async for p in progress:
                    now = p.details.get("thought")
                    if isinstance(now, str) and len(now) > len(thought) and now.startswith(thought):
                        yield "reasoning", now[len(thought):]
                        thought = now
                    yield ("final" if p.final else "progress"), p
        except ProgramError as e:
            raise server_error(str(e)) from None
        except (OSError, grpc.RpcError) as e:  # the server is not there, or not serving
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            raise ApiError(503, f"triton at {self.triton} unavailable: {detail}") from None

    async def _plain(self, params: dict[str, Any]) -> AsyncGenerator[tuple[str, Any], None]:
        inputs: dict[str, Any] = {"sampling_parameters": json.dumps(self.call.sampling), "stream": True}
        if self.call.messages:
            inputs["messages"] = json.dumps(self.call.messages)
        else:
            inputs["text_input"] = self.call.question
        tokens, finish = 0, "stop"
        async with aclosing(aio_stream(self.triton, PLAIN, inputs, params, self.timeout_s)) as responses:
            async for out in responses:
                if "text_output" in out:
                    text = "".join(t.decode() if isinstance(t, bytes) else str(t) for t in out["text_output"].reshape(-1))
                    if text:
                        yield "content", text
                if "num_output_tokens" in out:
                    tokens += int(out["num_output_tokens"].sum())
                if "finish_reason" in out:
                    reasons = [r.decode() if isinstance(r, bytes) else str(r) for r in out["finish_reason"].reshape(-1)]
                    finish = next((r for r in reasons if r), finish)
        yield "final", (tokens, "length" if finish == "length" else "stop")


def _pump(events: AsyncGenerator[tuple[str, Any], None]) -> tuple[asyncio.Task, asyncio.Queue]:
    """Run a stream's events in a task of their own, into a queue: the response generator only
    reads the queue, and cancelling the task (client gone) unwinds the gRPC stream with plain
    asyncio cancellation, whatever cancel scope the web server runs the response in."""
    queue: asyncio.Queue = asyncio.Queue()

    async def run() -> None:
        try:
            async with aclosing(events) as each:
                async for event in each:
                    await queue.put(("event", event))
            await queue.put(("end", None))
        except ApiError as e:
            await queue.put(("error", e))

    return asyncio.ensure_future(run()), queue


async def _watch(request: Request, work: asyncio.Task) -> Any:
    """Await `work` unless the client disconnects first; then cancel it (and so the program)."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if done:
            return work.result()
        if await request.is_disconnected():
            work.cancel()
            raise asyncio.CancelledError("client disconnected")


async def _collect(events: AsyncIterator[tuple[str, Any]]) -> tuple[str, str, Any]:
    reasoning, content, final = "", "", None
    async for kind, value in events:
        if kind == "reasoning":
            reasoning += value
        elif kind == "content":
            content += value
        elif kind == "final":
            final = value
    return reasoning, content, final


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def create_app(triton: str, timeout_s: float = 900.0) -> FastAPI:
    """The front for the server whose gRPC endpoint is `triton` (host:port)."""
    app = FastAPI(title="Dynasor OpenAI-compatible API")
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return model_list(created)

    @app.get("/health")
    async def health() -> JSONResponse:
        import tritonclient.grpc.aio as aio

        client = aio.InferenceServerClient(triton)
        try:
            ready = await client.is_server_ready()
        except Exception as e:  # noqa: BLE001 - any failure to reach the server is "not ready"
            return JSONResponse({"ready": False, "error": str(e)}, status_code=503)
        finally:
            await client.close()
        return JSONResponse({"ready": bool(ready)}, status_code=200 if ready else 503)

    async def serve(request: Request, chat: bool) -> Any:
        body = await _read_body(request)
        call = chat_call(body) if chat else completion_call(body)
        rid = new_id("chatcmpl" if chat else "cmpl")
        events = Events(triton, call, timeout_s).__aiter__()
        if not call.stream:
            reasoning, content, final = await _watch(request, asyncio.ensure_future(_collect(events)))
            if isinstance(final, Progress):
                content, tokens, extra = content_of(final), final.tokens_used, facts(final)
                finish = "stop"
            else:
                tokens, finish = final
                extra = None
            if chat:
                return chat_response(call, rid, content, tokens, extra, reasoning or None, finish)
            return completion_response(call, rid, content, tokens, extra, finish)
        pump, queue = _pump(events)
        try:
            # A refusal at the door (bad option, limits, a floor out of reach) comes within
            # milliseconds: it gets its HTTP status rather than a stream that says 200.
            first = await asyncio.wait_for(queue.get(), FIRST_RESPONSE_S)
        except asyncio.TimeoutError:
            first = None
        except BaseException:
            pump.cancel()
            raise
        if first is not None and first[0] == "error":
            raise first[1]
        return StreamingResponse(_stream(call, rid, chat, queue, pump, first), media_type="text/event-stream")

    async def _stream(call: ProgramCall, rid: str, chat: bool, queue: asyncio.Queue, pump: asyncio.Task,
                      first: tuple[str, Any] | None) -> AsyncIterator[bytes]:
        try:
            if chat:
                yield _sse(chunk(call, rid, chat, role=True, content=""))
            while True:
                what, item = first if first is not None else await queue.get()
                first = None
                if what == "end":
                    break
                if what == "error":
                    yield _sse(item.body())
                    break
                kind, value = item
                if kind == "progress":
                    yield _sse(chunk(call, rid, chat, extra=facts(value)))
                elif kind == "reasoning":
                    if chat:  # completions have no place for a chain of thought
                        yield _sse(chunk(call, rid, chat, reasoning=value))
                elif kind == "content":
                    yield _sse(chunk(call, rid, chat, content=value))
                elif isinstance(value, Progress):
                    yield _sse(chunk(call, rid, chat, content=content_of(value), extra=facts(value)))
                    yield _sse(chunk(call, rid, chat, finish_reason="stop"))
                    if call.include_usage:
                        yield _sse(chunk(call, rid, chat, tokens=value.tokens_used))
                else:
                    tokens, finish = value
                    yield _sse(chunk(call, rid, chat, finish_reason=finish))
                    if call.include_usage:
                        yield _sse(chunk(call, rid, chat, tokens=tokens))
            yield b"data: [DONE]\n\n"
        finally:
            pump.cancel()  # no await: the client may be gone, and the pump unwinds on its own

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await serve(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await serve(request, chat=False)

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dynasor openai", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--triton", default="127.0.0.1:8001", help="the Triton server's gRPC host:port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--timeout-s", type=float, default=900.0, help="longest a program's stream may stay open")
    args = ap.parse_args(argv)
    import uvicorn

    print(f"dynasor openai: http://{args.host}:{args.port}/v1 -> triton gRPC {args.triton}", flush=True)
    uvicorn.run(create_app(args.triton, args.timeout_s), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
