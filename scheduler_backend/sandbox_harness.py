"""Runs inside the sandbox under the system Python (stdlib only, no project import): reads one JSON
request on stdin, runs the candidate source, and writes one JSON report to $DYNASOR_RESULT.

Request: {"source": str, "entry_point": str, "call_s": float} and either
  "calls": [expression, ...]  -> {"defined": bool, "error": str, "outcomes": [str, ...]}
    (each outcome "=" + canonical repr of the value, or "!" + the exception's type name; after a
    call that timed out the rest are "!Skipped", so a hanging program costs one call_s), or
  "test": str                 -> {"defined": bool, "error": str, "passed": bool}
    (the test code defines check(candidate); it is called with the entry point).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


class CallTimeout(BaseException):
    """Raised by the alarm; a BaseException so that a bare `except Exception` in the code cannot
    swallow it."""


def _alarm(signum: int, frame: Any) -> None:
    raise CallTimeout()


def canonical(value: Any, depth: int = 0) -> str:
    """A repr that two programs computing the same value share: floats to 9 significant digits."""
    if depth > 20:
        return "..."
    if isinstance(value, float):
        return format(value, ".9g")
    if isinstance(value, (list, tuple)):
        inner = ",".join(canonical(v, depth + 1) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, dict):
        items = sorted((canonical(k, depth + 1), canonical(v, depth + 1)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (set, frozenset)):
        return "set(" + ",".join(sorted(canonical(v, depth + 1) for v in value)) + ")"
    return repr(value)[:1000]


def timed(call_s: float, fn: Callable[..., Any], *args: Any) -> Any:
    signal.setitimer(signal.ITIMER_REAL, call_s)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    request = json.loads(sys.stdin.read())
    result_path = os.environ.pop("DYNASOR_RESULT")
    signal.signal(signal.SIGALRM, _alarm)
    call_s = float(request["call_s"])
    namespace: dict[str, Any] = {"__name__": "__candidate__"}
    report: dict[str, Any] = {"defined": False, "error": ""}
    try:
        timed(call_s, exec, compile(request["source"], "<candidate>", "exec"), namespace)
        report["defined"] = callable(namespace.get(request["entry_point"]))
    except CallTimeout:
        report["error"] = "Timeout"
    except BaseException as e:  # noqa: BLE001 - any failure of model code is its outcome
        report["error"] = type(e).__name__
    if "calls" in request:
        outcomes: list[str] = []
        for expr in request["calls"] if report["defined"] else []:
            if outcomes and outcomes[-1] == "!Timeout":  # a program that hangs once is judged by that
                outcomes.append("!Skipped")
                continue
            try:
                outcomes.append("=" + canonical(timed(call_s, eval, expr, namespace)))
            except CallTimeout:
                outcomes.append("!Timeout")
            except BaseException as e:  # noqa: BLE001
                outcomes.append("!" + type(e).__name__)
        report["outcomes"] = outcomes
    else:
        passed = False
        if report["defined"]:
            try:
                timed(call_s, exec, compile(request["test"], "<test>", "exec"), namespace)
                timed(call_s, namespace["check"], namespace[request["entry_point"]])
                passed = True
            except BaseException as e:  # noqa: BLE001
                report["error"] = "test: " + type(e).__name__
        report["passed"] = passed
    with open(result_path, "w") as f:
        json.dump(report, f)
    sys.stdout.flush()
    os._exit(0)  # no atexit handlers or finalizers of the candidate's


if __name__ == "__main__":
    main()
