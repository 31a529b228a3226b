"""JSON across the Triton door, strict both ways. In: a size cap and a nesting cap checked before
the parser runs (Python's parser recurses: 100,000 brackets were a RecursionError), duplicate keys
refused (the last one silently won), NaN/Infinity refused. Out: values JSON cannot carry (NaN,
infinities) become null, so strict parsers (browsers, Go, Rust) accept every event."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from scheduler_backend.errors import RequestError

MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32


def _depth(raw: str) -> int:
    """Deepest bracket nesting outside string literals, without parsing."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_duplicates(field: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise RequestError(f"{field}: duplicate key {key!r}")
            out[key] = value
        return out

    return hook


def _not_a_number(field: str) -> Callable[[str], Any]:
    def hook(name: str) -> Any:
        raise RequestError(f"{field}: {name} is not a JSON value")

    return hook


def parse_json(raw: str, field: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`raw` parsed strictly; RequestError naming `field` for anything the door refuses."""
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise RequestError(f"{field}: {size} bytes of JSON, at most {max_bytes}")
    depth = _depth(raw)
    if depth > max_depth:
        raise RequestError(f"{field}: JSON nested {depth} deep, at most {max_depth}")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates(field), parse_constant=_not_a_number(field))
    except json.JSONDecodeError as e:
        raise RequestError(f"{field}: not valid JSON ({e})") from None


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """Valid JSON for any response field: non-finite numbers are null."""
    return json.dumps(finite(value), allow_nan=False)
