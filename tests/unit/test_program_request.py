"""The `dynasor` model's door: options from the JSON input and request parameters, serving
options (deadline, progress, calibration) split from program options, every refusal naming its field."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model_repository" / "dynasor" / "1"))
from program_request import parse_program_request  # noqa: E402

from scheduler_backend.errors import RequestError  # noqa: E402
from scheduler_backend.registry import Limits  # noqa: E402

Q = "What is 3 + 5?"


def parse(question=Q, program=None, options=None, parameters=None, calibration_dir=None):
    return parse_program_request(question, program, None if options is None else json.dumps(options) if not isinstance(options, (str, bytes)) else options,
                                 parameters or {}, default_program="self-consistency", limits=Limits(max_budget=32),
                                 max_deadline_s=60, calibration_dir=calibration_dir)


def test_defaults_and_bytes_inputs():
    req = parse(question=Q.encode(), program=b"self-consistency")
    assert req.program_name == "self-consistency" and req.question == Q
    assert req.deadline_s is None and req.progress is True
    assert req.program.budget >= 1


def test_the_options_input_wins_over_request_parameters():
    req = parse(options={"budget": 6, "deadline_s": 5, "progress": False}, parameters={"budget": 3, "program": "self-consistency"})
    assert req.program.budget == 6 and req.deadline_s == 5.0 and req.progress is False


def test_http_style_parameters_are_options_and_transport_keys_are_ignored():
    req = parse(parameters={"budget": 3, "triton_enable_empty_final_response": True, "program": "mcts"})
    assert req.program_name == "mcts" and req.program.budget == 3


@pytest.mark.parametrize("kwargs, field", [
    ({"question": None}, "text_input"),
    ({"question": b"\xff\xfe"}, "text_input"),
    ({"program": "nope"}, "program"),
    ({"program": 5}, "program"),
    ({"options": "{bad"}, "options"),
    ({"options": "[1]"}, "options"),
    ({"options": {"deadline_s": 0}}, "options.deadline_s"),
    ({"options": {"deadline_s": 61}}, "options.deadline_s"),
    ({"options": {"deadline_s": True}}, "options.deadline_s"),
    ({"options": {"progress": "yes"}}, "options.progress"),
    ({"options": {"budget": 33}}, "options.budget"),
    ({"options": {"calibration": "../x"}}, "options.calibration"),
    ({"options": {"calibration": "missing"}}, "options.calibration"),
    ({"options": {"calibration": "x", "allocation": {"kind": "threshold"}}}, "options.calibration"),
])
def test_refusals_name_the_field(kwargs, field):
    with pytest.raises(RequestError) as err:
        parse(**kwargs)
    assert str(err.value).startswith(field), str(err.value)


def test_a_named_calibration_becomes_the_allocation_policy(tmp_path):
    (tmp_path / "gsm8k.json").write_text(json.dumps({"policy": {"kind": "threshold", "settle": 0.55, "detect_step": 6}}))
    req = parse(options={"calibration": "gsm8k"}, calibration_dir=tmp_path)
    assert req.program.policy.settle == 0.55 and req.program.policy.detect_step == 6
