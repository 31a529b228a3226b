"""The OpenAI API's words for reasoning programs: which model name runs which program, how a chat
or completions request becomes the question, program and options of one `dynasor` request, and
how the program's responses and errors become OpenAI objects. No web framework here, so each
mapping is unit-tested on its own (frontends/openai_server.py serves them).

Program options travel as one top-level extra field, `dynasor` (what the `openai` client's
`extra_body={"dynasor": {...}}` sends: it merges `extra_body` into the top level of the JSON).
"""
from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler_backend.errors import RequestError
from scheduler_backend.programs import EFFORTS
from scheduler_backend.registry import Limits, Number

PLAIN = "policy"  # ordinary chat, straight to the engine
PROGRAMS = {f"dynasor/{name}": name for name in ("self-consistency", "code", "cot-probe", "rebase", "mcts")}
# reasoning_effort -> options. Sample-based programs scale their budget; cot-probe takes the public
# Dynasor code's effort presets (a smaller probe window stops sooner) and the most chunks of thought.
EFFORT_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "cot-probe": {"low": {"effort": "high", "budget": 16}, "medium": {"effort": "mid", "budget": 32},
                  "high": {"effort": "mild", "budget": 64}},
    **{name: {"low": {"budget": 4}, "medium": {"budget": 8}, "high": {"budget": 16}}
       for name in ("self-consistency", "code", "rebase", "mcts")},
}
# Fields OpenAI clients send that a reasoning program cannot honour: refused by name when they ask
# for something (a default value passes).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {"tools": (None, []), "tool_choice": (None, "none", "auto"), "logprobs": (None, False), "top_logprobs": (None, 0),
                "response_format": (None, {"type": "text"}), "functions": (None, []), "logit_bias": (None, {})}


class ApiError(Exception):
    """An error an OpenAI client understands: HTTP status, message, the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_exceeded",
                             503: "service_unavailable"}.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        code = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "service_unavailable"}.get(self.status)
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": code}}


@dataclass
class ProgramCall:
    """One request, ready for the server: a program run (`program` set) or plain chat."""

    model: str
    stream: bool
    include_usage: bool
    program: str | None = None
    question: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)  # plain chat
    sampling: dict[str, Any] = field(default_factory=dict)  # plain chat
    client_id: str | None = None


def model_list(created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "dynasor"}
                                       for name in (*PROGRAMS, PLAIN)]}


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float, integer: bool = False) -> float | None:
    """A numeric field in [lo, hi], or None when absent: the registry's own check, as an OpenAI error."""
    if body.get(name) is None:
        return None
    try:
        return Number(None, lo, hi, integer=integer).check(name, body[name], Limits())
    except RequestError as e:
        raise ApiError(400, str(e), name) from None


def _text(content: Any, param: str) -> str:
    """A message's content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{param}: expected a string or a list of text parts", param)


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role: expected system, developer, user or assistant", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _text(m.get("content"), f"messages[{i}].content")})
    return out


def _question(messages: list[dict[str, str]]) -> str:
    """A program answers one question: the conversation must be a single user turn. System prompts
    are the program's own (its prompt option), so one sent here would be silently lost: refused."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(messages) != 1 or not users:
        raise ApiError(400, "messages: a reasoning program answers one question: send exactly one user message "
                            "(its prompt is the program's `prompt` option; use model 'policy' for multi-turn chat)", "messages")
    return messages[0]["content"]


def _options(body: Mapping[str, Any], program: str) -> dict[str, Any]:
    given = body.get("dynasor", {})
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ApiError(400, "dynasor: expected an object of program options", "dynasor")
    options: dict[str, Any] = {}
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORT_OPTIONS[program]:
            raise ApiError(400, f"reasoning_effort: must be one of {', '.join(EFFORT_OPTIONS[program])}, got {effort!r}",
                           "reasoning_effort")
        options.update(EFFORT_OPTIONS[program][effort])
    for name in ("temperature", "top_p"):
        value = _number(body, name, 0.0 if name == "temperature" else 0.01, 2.0 if name == "temperature" else 1.0)
        if value is not None:
            options[name] = value
    max_tokens = _max_tokens(body)
    if max_tokens is not None:
        if program == "cot-probe":  # the whole thought's length, in chunks
            preset = EFFORTS.get(given.get("effort", options.get("effort", "mid")), EFFORTS["mid"])
            chunk = given.get("chunk_tokens") or preset[1]
            options["budget"] = max(1, math.ceil(max_tokens / chunk)) if isinstance(chunk, int) and chunk > 0 else 1
        else:
            options["max_tokens"] = max_tokens
    for name, why in (("seed", "a program draws many samples and seeds none of them"),
                      ("stop", "a program ends its own samples (its answers are read at their end)")):
        if body.get(name) is not None:
            raise ApiError(400, f"{name}: not supported by reasoning programs ({why}); model 'policy' takes it", name)
    options.update(given)  # explicit program options win over the mapped standard fields
    return options


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    a = _number(body, "max_completion_tokens", 1, 1 << 20, integer=True)
    b = _number(body, "max_tokens", 1, 1 << 20, integer=True)
    value = a if a is not None else b
    return None if value is None else int(value)


def _check_common(body: Mapping[str, Any]) -> tuple[bool, bool, str | None]:
    if not isinstance(body, Mapping):
        raise ApiError(400, "body: expected a JSON object")
    for name, defaults in _UNSUPPORTED.items():
        if name in body and body[name] not in defaults:
            raise ApiError(400, f"{name}: not supported here", name)
    n = _number(body, "n", 1, 1, integer=True)
    del n  # only 1: a program already returns its best of many samples
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream: expected true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options.include_usage: expected true or false", "stream_options")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not re.match(r"^[A-Za-z0-9_.:@-]{1,128}$", user)):
        raise ApiError(400, "user: expected 1-128 letters, digits or '_.:@-' (it is the client id for per-client limits)", "user")
    return stream, bool(options.get("include_usage", False)), user


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model: expected a model name (GET /v1/models lists them)", "model")
    if model != PLAIN and model not in PROGRAMS:
        raise ApiError(404, f"model {model!r} does not exist; choose one of {', '.join((*PROGRAMS, PLAIN))}", "model")
    return model


def chat_call(body: Mapping[str, Any]) -> ProgramCall:
    """A /v1/chat/completions body, validated; errors name the field (`param`)."""
    stream, include_usage, user = _check_common(body)
    model = _model(body)
    messages = _messages(body)
    if model == PLAIN:
        return ProgramCall(model, stream, include_usage, messages=messages, sampling=plain_sampling(body), client_id=user)
    return ProgramCall(model, stream, include_usage, PROGRAMS[model], _question(messages), _options(body, PROGRAMS[model]),
                       client_id=user)


def completion_call(body: Mapping[str, Any]) -> ProgramCall:
    """A /v1/completions body: `prompt` is the question (plain `policy`: raw text continued)."""
    stream, include_usage, user = _check_common(body)
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt: expected one non-empty string", "prompt")
    if model == PLAIN:
        return ProgramCall(model, stream, include_usage, question=prompt, sampling=plain_sampling(body), client_id=user)
    return ProgramCall(model, stream, include_usage, PROGRAMS[model], prompt, _options(body, PROGRAMS[model]), client_id=user)


def plain_sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM sampling parameters for plain chat (the `policy` model validates them again)."""
    sampling: dict[str, Any] = {"n": 1}
    for name, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.01, 1.0), ("presence_penalty", -2.0, 2.0),
                         ("frequency_penalty", -2.0, 2.0)):
        value = _number(body, name, lo, hi)
        if value is not None:
            sampling[name] = value
    max_tokens = _max_tokens(body)
    sampling["max_tokens"] = max_tokens if max_tokens is not None else 512
    seed = _number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True)
    if seed is not None:
        sampling["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise ApiError(400, "stop: expected a string or up to 4 strings", "stop")
        sampling["stop"] = stops
    return sampling


_FIELD = re.compile(r"(?:^|\] )((?:options\.)?[A-Za-z_][\w.\[\]]*): ")


def server_error(message: str) -> ApiError:
    """A `dynasor` error message as an OpenAI error: a refused field is a 400 naming the request
    field it came from, a per-client limit 429, the server busy, refusing or restarting 503."""
    if "max_programs_per_client" in message:
        return ApiError(429, message, "user")
    if any(s in message for s in ("server busy", "floor:", "program failed", "restarting", "draining", "not ready", "unavailable",
                                  "unknown model")):
        return ApiError(503, message)
    m = _FIELD.search(message)
    if m:
        name = m.group(1)
        param = {"text_input": "messages", "client_id": "user", "program": "model"}.get(name)
        if name.startswith("sampling_parameters."):  # plain chat: the policy model's names are OpenAI's
            param = name[len("sampling_parameters."):]
        if param is None:
            param = "dynasor." + name[len("options."):] if name.startswith("options.") else ("dynasor" if name == "options" else name)
        return ApiError(400, message, param)
    return ApiError(500, message)


def facts(progress: Any) -> dict[str, Any]:
    """The program's facts for the extra `dynasor` field of a response or chunk."""
    d = progress.details
    return {"program_id": progress.program_id, "answer": progress.answer, "certaindex": round(progress.certaindex, 4),
            "stop_reason": progress.stop_reason or None, "steps": progress.steps, "budget": d.get("budget"),
            "tokens_used": progress.tokens_used, "final": progress.final,
            **{k: d[k] for k in ("quality", "latency_s", "clusters", "probes") if k in d}}


def content_of(progress: Any) -> str:
    """What the answer's message says: the chosen sample's text ending in its answer, or the answer
    itself where the program keeps no text (a program's source, a tree search's best path)."""
    text = progress.details.get("answer_text")
    return text if isinstance(text, str) and text else (progress.answer or "")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(completion_tokens: int, prompt_tokens: int = 0) -> dict[str, int]:
    """Every token the program generated, all samples and probes (prompts are not counted: a program
    sends its own, many times, and the engine counts them there)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_response(call: ProgramCall, rid: str, content: str, tokens: int, extra: dict[str, Any] | None,
                  reasoning: str | None = None, finish_reason: str = "stop") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    body: dict[str, Any] = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": call.model,
                            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
                            "usage": usage(tokens)}
    if extra is not None:
        body["dynasor"] = extra
    return body


def completion_response(call: ProgramCall, rid: str, content: str, tokens: int, extra: dict[str, Any] | None,
                        finish_reason: str = "stop") -> dict[str, Any]:
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": call.model,
                            "choices": [{"index": 0, "text": content, "finish_reason": finish_reason, "logprobs": None}],
                            "usage": usage(tokens)}
    if extra is not None:
        body["dynasor"] = extra
    return body


def chunk(call: ProgramCall, rid: str, chat: bool, *, content: str | None = None, reasoning: str | None = None,
          finish_reason: str | None = None, extra: dict[str, Any] | None = None, tokens: int | None = None,
          role: bool = False) -> dict[str, Any]:
    """One streamed chunk. Progress chunks carry only the extra field (an empty delta); a usage
    chunk (`tokens` given) has no choices, as OpenAI sends it with include_usage."""
    base: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                            "model": call.model}
    if tokens is not None:
        return {**base, "choices": [], "usage": usage(tokens)}
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if content is not None:
            delta["content"] = content
        if reasoning is not None:
            delta["reasoning_content"] = reasoning
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": content or "", "finish_reason": finish_reason, "logprobs": None}
    out = {**base, "choices": [choice]}
    if extra is not None:
        out["dynasor"] = extra
    return out
