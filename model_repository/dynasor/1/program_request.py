"""A `dynasor` request at the door: question, program and options, validated before anything runs.
Every refusal names the field. No Triton import, so it is unit-tested on its own.

Options come from the `options` JSON input and from request parameters (HTTP generate_stream puts
extra JSON keys there); the input wins. The door keeps the serving options (deadline, quality
floor, progress, calibration) and hands the rest to the program registry, which validates them per
program.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler_backend.allocation import load_calibration, policy_to_dict
from scheduler_backend.errors import RequestError
from scheduler_backend.program import ReasoningProgram
from scheduler_backend.quality import FLOOR_ACTIONS, QualityFloor
from scheduler_backend.registry import Limits, create
from serving.door_json import parse_json
from serving.triton_model import text

# Request parameters Triton or its clients set on their own; they are not program options.
_TRANSPORT_PARAMETERS = {"triton_enable_empty_final_response", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
# Who a program counts against for max_programs_per_client: a `client_id` request parameter, or
# the `dynasor-client-id` header where the server forwards it (--http-header-forward-pattern).
CLIENT_ID_KEYS = ("client_id", "dynasor-client-id")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@dataclass
class ProgramRequest:
    question: str
    program_name: str
    program: ReasoningProgram
    deadline_s: float | None
    progress: bool
    client_id: str | None = None
    floor: QualityFloor = field(default_factory=QualityFloor)


NO_FLOOR = QualityFloor()


def _floor(options: dict[str, Any], default: QualityFloor) -> QualityFloor:
    """The request's quality floor (`floor`, `floor_action` options) over the operator's default;
    whether probed answers count stays the operator's."""
    units = options.pop("floor", default.units)
    action = options.pop("floor_action", default.action)
    if isinstance(units, bool) or not isinstance(units, int) or units < 0:
        raise RequestError(f"options.floor: expected a whole number of knob units >= 0, got {units!r}")
    if action not in FLOOR_ACTIONS:
        raise RequestError(f"options.floor_action: must be one of {', '.join(FLOOR_ACTIONS)}, got {action!r}")
    return QualityFloor(units, action, default.count_probed)


def _deadline(value: Any, max_deadline_s: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"options.deadline_s: expected a number of seconds, got {value!r}")
    if not 0 < value <= max_deadline_s:
        raise RequestError(f"options.deadline_s: must be in (0, {max_deadline_s:g}], got {value}")
    return float(value)


def _calibration(name: Any, calibration_dir: Path | None, field: str = "options.calibration") -> dict[str, Any]:
    """The named calibration's policy (allocation.load_calibration): NAME takes its "policy"
    entry, NAME:curve its fitted curve."""
    if not isinstance(name, str):
        raise RequestError(f"{field}: expected the name of a calibration file (letters, digits, '._-')")
    try:
        return policy_to_dict(load_calibration(name, calibration_dir))
    except ValueError as e:
        raise RequestError(f"{field}: {e}") from None


@dataclass(frozen=True)
class DefaultAllocation:
    """The server's allocation for requests that choose none: shipped calibrations, each applied to
    the program it was fitted on (certaindex means something else in another program)."""

    policies: dict[str, dict[str, Any]]  # program -> policy


def default_allocation(spec: str, calibration_dir: Path) -> DefaultAllocation | None:
    """config.pbtxt `default_allocation` ("" or NAME[:curve], comma-separated, one per program)
    read once at load; errors name it."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        return None
    policies: dict[str, dict[str, Any]] = {}
    for name in names:
        policy = _calibration(name, calibration_dir, "parameters.default_allocation")
        doc = json.loads((calibration_dir / f"{name.partition(':')[0]}.json").read_text())
        program = str(doc.get("program", "self-consistency"))
        if program in policies:
            raise RequestError(f"parameters.default_allocation: two calibrations for {program}; name one per program")
        policies[program] = policy
    return DefaultAllocation(policies)


@dataclass
class CancelRequest:
    """`cancel_program`: stop a program this server runs (HTTP clients cannot cancel a stream)."""

    program_id: str


@dataclass(frozen=True)
class DrainRequest:
    """`drain`: stop admitting programs, let those in flight finish within `grace_s` seconds, then
    stop the rest with their best answers so far. Sent by a preStop hook or `dynasor drain`."""

    grace_s: float


_PROGRAM_ID = re.compile(r"^[0-9a-f]{32}$")
# Options that choose an allocation themselves; a request with any of them skips the default.
_ALLOCATION_KEYS = {"allocation", "settle_threshold", "detect_step", "hopeless_threshold", "hopeless_step"}


def _client_id(parameters: Mapping[str, Any]) -> str | None:
    given = [parameters[k] for k in CLIENT_ID_KEYS if k in parameters]
    if not given:
        return None
    value = given[0]
    if not isinstance(value, str) or not _CLIENT_ID.match(value):
        raise RequestError("client_id: expected 1-128 letters, digits or '_.:@-'")
    return value


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
    default: DefaultAllocation | None = None,
    default_floor: QualityFloor = NO_FLOOR,
) -> ProgramRequest | CancelRequest | DrainRequest:
    """Validated request, or RequestError naming the first bad field."""
    if "drain" in parameters:
        grace = parameters["drain"]
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or not 0 <= grace <= max_deadline_s:
            raise RequestError(f"drain: expected the grace period in seconds, 0 to {max_deadline_s:g} (max_deadline_s), got {grace!r}")
        return DrainRequest(float(grace))
    if "cancel_program" in parameters:
        target = parameters["cancel_program"]
        if not isinstance(target, str) or not _PROGRAM_ID.match(target):
            raise RequestError("cancel_program: expected a program_id (32 hex digits) from the program's responses")
        return CancelRequest(target)
    question_text = text(question, "text_input") if question is not None else ""
    program_name = text(program, "program") if program is not None else parameters.get("program", default_program)
    client_id = _client_id(parameters)
    options = {k: v for k, v in parameters.items() if k not in _TRANSPORT_PARAMETERS and k != "program" and k not in CLIENT_ID_KEYS}
    if options_json is not None:
        given = parse_json(text(options_json, "options"), "options")
        if not isinstance(given, dict):
            raise RequestError(f"options: expected a JSON object, got {type(given).__name__}")
        options.update(given)
    deadline_s = _deadline(options.pop("deadline_s", None), max_deadline_s)
    floor = _floor(options, default_floor)
    progress = options.pop("progress", True)
    if not isinstance(progress, bool):
        raise RequestError(f"options.progress: expected true or false, got {progress!r}")
    if "calibration" in options:
        if "allocation" in options:
            raise RequestError("options.calibration: give either calibration or allocation, not both")
        options["allocation"] = _calibration(options.pop("calibration"), calibration_dir)
    elif default is not None and program_name in default.policies and not _ALLOCATION_KEYS & set(options):
        options["allocation"] = default.policies[program_name]
    built = create(program_name, question_text, options, limits)
    if floor.units > built.budget:
        raise RequestError(f"options.floor: {floor.units} knob units is above the program's budget ({built.budget})")
    return ProgramRequest(question_text, program_name, built, deadline_s, progress, client_id, floor)
