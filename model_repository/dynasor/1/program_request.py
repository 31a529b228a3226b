"""A `dynasor` request at the door: question, program and options, validated before anything runs.
Every refusal names the field. No Triton import, so it is unit-tested on its own.

Options come from the `options` JSON input and from request parameters (HTTP generate_stream puts
extra JSON keys there); the input wins. The door keeps the serving options (deadline, progress,
calibration) and hands the rest to the program registry, which validates them per program.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler_backend.allocation import load_policy, policy_to_dict
from scheduler_backend.errors import RequestError
from scheduler_backend.program import ReasoningProgram
from scheduler_backend.registry import Limits, create
from serving.triton_model import text

_CALIBRATION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Request parameters Triton or its clients set on their own; they are not program options.
_TRANSPORT_PARAMETERS = {"triton_enable_empty_final_response", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


@dataclass
class ProgramRequest:
    question: str
    program_name: str
    program: ReasoningProgram
    deadline_s: float | None
    progress: bool


def _deadline(value: Any, max_deadline_s: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"options.deadline_s: expected a number of seconds, got {value!r}")
    if not 0 < value <= max_deadline_s:
        raise RequestError(f"options.deadline_s: must be in (0, {max_deadline_s:g}], got {value}")
    return float(value)


def _calibration(name: Any, calibration_dir: Path | None) -> dict[str, Any]:
    """The named calibration's chosen policy, read by the allocation module's own loader."""
    if not isinstance(name, str) or not _CALIBRATION_NAME.match(name):
        raise RequestError("options.calibration: expected the name of a calibration file (letters, digits, '._-')")
    path = calibration_dir / f"{name}.json" if calibration_dir else None
    if path is None or not path.is_file():
        raise RequestError(f"options.calibration: no calibration named {name!r} on this server")
    try:
        return policy_to_dict(load_policy(path))
    except ValueError as e:
        raise RequestError(f"options.calibration: {e}") from None


def parse_program_request(
    question: Any,
    program: Any,
    options_json: Any,
    parameters: Mapping[str, Any],
    *,
    default_program: str,
    limits: Limits,
    max_deadline_s: float,
    calibration_dir: Path | None = None,
) -> ProgramRequest:
    """Validated request, or RequestError naming the first bad field."""
    question_text = text(question, "text_input") if question is not None else ""
    program_name = text(program, "program") if program is not None else str(parameters.get("program", default_program))
    options = {k: v for k, v in parameters.items() if k not in _TRANSPORT_PARAMETERS and k != "program"}
    if options_json is not None:
        try:
            given = json.loads(text(options_json, "options"))
        except json.JSONDecodeError as e:
            raise RequestError(f"options: not valid JSON ({e})") from None
        if not isinstance(given, dict):
            raise RequestError(f"options: expected a JSON object, got {type(given).__name__}")
        options.update(given)
    deadline_s = _deadline(options.pop("deadline_s", None), max_deadline_s)
    progress = options.pop("progress", True)
    if not isinstance(progress, bool):
        raise RequestError(f"options.progress: expected true or false, got {progress!r}")
    if "calibration" in options:
        if "allocation" in options:
            raise RequestError("options.calibration: give either calibration or allocation, not both")
        options["allocation"] = _calibration(options.pop("calibration"), calibration_dir)
    built = create(program_name, question_text, options, limits)
    return ProgramRequest(question_text, program_name, built, deadline_s, progress)
