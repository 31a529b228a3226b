"""Validation of a policy request at the door: every refusal names the field and the reason, so a
bad request costs its sender one error and the engine nothing. No Triton import: unit-testable."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler_backend.errors import RequestError
from serving.door_json import parse_json
from serving.triton_model import text

# Sampling fields a request may set, with their types; everything else is refused by name, so a
# typo is an error rather than a silently ignored option.
_FIELDS: dict[str, tuple[type, ...]] = {
    "n": (int,),
    "max_tokens": (int,),
    "min_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "min_p": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "repetition_penalty": (int, float),
    "stop": (str, list),
    "stop_token_ids": (list,),
    "seed": (int,),
    "logprobs": (int,),
    "ignore_eos": (bool,),
    "skip_special_tokens": (bool,),
    "include_stop_str_in_output": (bool,),
}
_MAX_LOGPROBS = 20
_ROLES = ("system", "user", "assistant")


@dataclass
class PolicyRequest:
    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    priority: int = 0
    abort_ids: list[str] = field(default_factory=list)

    @property
    def logprobs(self) -> int | None:
        return self.sampling.get("logprobs")

    def sampling_params(self, stream: bool):
        """vLLM SamplingParams; deltas when streaming, one final output otherwise."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        return SamplingParams(**self.sampling, output_kind=kind)


def _scalar(inputs: dict, name: str):
    value = inputs.get(name)
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise RequestError(f"{name}: expected one element, got {arr.size}")
    item = arr[0]
    if isinstance(item, (bytes, str)):
        return text(item, name)
    return item.item() if hasattr(item, "item") else item


def _json(raw, name: str):
    return parse_json(text(raw, name), name)


def _check_sampling(sampling: dict, max_n: int, max_tokens_limit: int, seed_refusal: str | None, vocab_size: int | None) -> None:
    for key, value in sampling.items():
        if key not in _FIELDS:
            raise RequestError(f"sampling_parameters.{key}: unknown field; allowed: {', '.join(sorted(_FIELDS))}")
        types = _FIELDS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise RequestError(f"sampling_parameters.{key}: expected {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"sampling_parameters.{key}: must be finite, got {value}")
    bounds = {
        "n": (1, max_n),
        "max_tokens": (1, max_tokens_limit),
        "min_tokens": (0, max_tokens_limit),
        "temperature": (0.0, 100.0),
        "top_p": (1e-9, 1.0),
        "min_p": (0.0, 1.0),
        "logprobs": (0, _MAX_LOGPROBS),
        "presence_penalty": (-2.0, 2.0),
        "frequency_penalty": (-2.0, 2.0),
        "repetition_penalty": (1e-9, 100.0),
        "seed": (-(2**63), 2**63 - 1),
    }
    for key, (lo, hi) in bounds.items():
        if key in sampling and not lo <= sampling[key] <= hi:
            raise RequestError(f"sampling_parameters.{key}: must be in [{lo}, {hi}], got {sampling[key]}")
    if "top_k" in sampling and sampling["top_k"] != -1 and sampling["top_k"] < 1:
        raise RequestError(f"sampling_parameters.top_k: must be -1 or >= 1, got {sampling['top_k']}")
    if vocab_size is not None and sampling.get("top_k", -1) > vocab_size:
        raise RequestError(f"sampling_parameters.top_k: at most the vocabulary size {vocab_size} (or -1 for no cut), got {sampling['top_k']}")
    ids = sampling.get("stop_token_ids", [])
    bad_ids = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or t < 0 or vocab_size is not None and t >= vocab_size]
    if bad_ids:
        raise RequestError(f"sampling_parameters.stop_token_ids: token ids must be integers in [0, {vocab_size or 'vocabulary size'}), got {bad_ids[0]!r}")
    if sampling.get("min_tokens", 0) > sampling.get("max_tokens", max_tokens_limit):
        raise RequestError(f"sampling_parameters.min_tokens: must not exceed max_tokens ({sampling.get('max_tokens')}), got {sampling['min_tokens']}")
    stop = sampling.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise RequestError("sampling_parameters.stop: expected a string or a list of strings")
    if "seed" in sampling and seed_refusal:
        raise RequestError(seed_refusal)


def _check_messages(messages) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty JSON list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise RequestError(f"messages[{i}]: expected an object with exactly 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise RequestError(f"messages[{i}].role: must be one of {', '.join(_ROLES)}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise RequestError(f"messages[{i}].content: expected a string")
    return messages


def parse_request(inputs: dict, max_n: int, max_tokens_limit: int, seed_refusal: str | None = None,
                  vocab_size: int | None = None) -> PolicyRequest:
    """Decoded, validated request. Sampling fields may come from `sampling_parameters` (JSON) or
    from request parameters (HTTP generate puts unknown JSON keys there); the input wins."""
    if "abort_request_ids" in inputs:
        ids = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.asarray(inputs["abort_request_ids"]).reshape(-1)]
        if not ids or not all(ids):
            raise RequestError("abort_request_ids: expected one or more non-empty request ids")
        return PolicyRequest(abort_ids=ids)

    req = PolicyRequest()
    params = _json(inputs["parameters"], "parameters") if "parameters" in inputs else {}
    sampling = {k: v for k, v in params.items() if k in _FIELDS}
    if "sampling_parameters" in inputs:
        given = _json(_scalar(inputs, "sampling_parameters"), "sampling_parameters")
        if not isinstance(given, dict):
            raise RequestError("sampling_parameters: expected a JSON object")
        sampling.update(given)
    max_tokens = _scalar(inputs, "max_tokens")
    if max_tokens is not None:
        sampling["max_tokens"] = int(max_tokens)
    sampling.setdefault("max_tokens", 256)
    _check_sampling(sampling, max_n, max_tokens_limit, seed_refusal, vocab_size)
    req.sampling = sampling

    text = _scalar(inputs, "text_input")
    if "messages" in inputs:
        req.messages = _check_messages(_json(_scalar(inputs, "messages"), "messages"))
    elif text is None or not str(text).strip():
        raise RequestError("text_input: required (a non-empty prompt) unless messages is given")
    req.prompt = text or ""

    stream = _scalar(inputs, "stream")
    req.stream = bool(stream) if stream is not None else bool(params.get("stream", False))
    priority = _scalar(inputs, "priority")
    if priority is None:
        priority = params.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, (int, np.integer)):
        raise RequestError(f"priority: expected an integer, got {type(priority).__name__}")
    if not -(2**31) <= priority < 2**31:
        raise RequestError(f"priority: must fit in 32 bits, got {priority}")
    req.priority = int(priority)
    return req
