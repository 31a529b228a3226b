"""Strict JSON at the door of all three models, and the operator's limits: every refusal names
its field, nothing deep or duplicated reaches a parser, nothing non-finite leaves as JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "model_repository" / "policy" / "1"))
sys.path.insert(0, str(ROOT / "model_repository" / "dynasor" / "1"))
from program_request import CancelRequest, default_allocation, parse_program_request  # noqa: E402
from sampling_request import parse_request  # noqa: E402

from scheduler_backend.errors import RequestError  # noqa: E402
from scheduler_backend.quality import QualityFloor  # noqa: E402
from scheduler_backend.registry import Limits, create  # noqa: E402
from serving.door_json import dump_json, parse_json  # noqa: E402

Q = "What is 3 + 5?"


@pytest.mark.parametrize("raw, message", [
    ('{"budget": 100, "budget": 1}', "options: duplicate key 'budget'"),
    ('{"a": {"b": 1, "b": 2}}', "options: duplicate key 'b'"),
    ("[" * 100_000 + "]" * 100_000, "options: JSON nested 100000 deep, at most 32"),
    ('{"x": NaN}', "options: NaN is not a JSON value"),
    ('{"x": -Infinity}', "options: -Infinity is not a JSON value"),
    ('{"x": "' + "y" * (1 << 20) + '"}', "options: 1048585 bytes of JSON, at most 1048576"),
    ("{nope", "options: not valid JSON"),
])
def test_strict_json_refusals_name_the_field(raw, message):
    with pytest.raises(RequestError) as err:
        parse_json(raw, "options")
    assert str(err.value).startswith(message)


def test_brackets_inside_strings_do_not_count_as_depth():
    assert parse_json(json.dumps({"s": "[[[[" * 100 + '\\"{'}), "options") == {"s": "[[[[" * 100 + '\\"{'}


def test_responses_carry_null_for_values_json_cannot_hold():
    text = dump_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": float("-inf")}})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in output")) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def policy(inputs: dict, vocab_size: int | None = 49152):
    return parse_request(inputs, max_n=8, max_tokens_limit=512, vocab_size=vocab_size)


@pytest.mark.parametrize("inputs, field", [
    ({"text_input": np.array([b"\xff\xfe bad"], dtype=object)}, "text_input: not valid UTF-8"),
    ({"text_input": np.array([b"hi"], dtype=object), "sampling_parameters": np.array([b'{"top_k": 1000000000000}'], dtype=object)},
     "sampling_parameters.top_k: at most the vocabulary size 49152"),
    ({"text_input": np.array([b"hi"], dtype=object), "sampling_parameters": np.array([b'{"stop_token_ids": [49152]}'], dtype=object)},
     "sampling_parameters.stop_token_ids"),
    ({"text_input": np.array([b"hi"], dtype=object), "sampling_parameters": np.array([b'{"max_tokens": 4, "min_tokens": 9}'], dtype=object)},
     "sampling_parameters.min_tokens"),
    ({"text_input": np.array([b"hi"], dtype=object), "sampling_parameters": np.array([b'{"n": 1, "n": 8}'], dtype=object)},
     "sampling_parameters: duplicate key 'n'"),
    ({"text_input": np.array([b"hi"], dtype=object), "sampling_parameters": np.array([b'{"temperature": NaN}'], dtype=object)},
     "sampling_parameters: NaN"),
    ({"messages": np.array([b"[" * 5000 + b"]" * 5000], dtype=object)}, "messages: JSON nested 5000 deep"),
    ({"messages": np.array([b"\xc3\x28"], dtype=object)}, "messages: not valid UTF-8"),
    ({"text_input": np.array([b"hi"], dtype=object), "parameters": '{"top_k": 5, "top_k": 6}'}, "parameters: duplicate key 'top_k'"),
    ({"text_input": np.array([b"hi"], dtype=object), "priority": np.array([2**40])}, "priority: must fit in 32 bits"),
])
def test_policy_refusals_name_the_field(inputs, field):
    with pytest.raises(RequestError) as err:
        policy(inputs)
    assert str(err.value).startswith(field), str(err.value)


def test_policy_top_k_up_to_the_vocabulary_passes():
    req = policy({"text_input": np.array([b"hi"], dtype=object), "sampling_parameters": np.array([b'{"top_k": 49152}'], dtype=object)})
    assert req.sampling["top_k"] == 49152


DEFAULT_LIMITS = Limits(max_budget=64)


def program(options=None, parameters=None, limits=DEFAULT_LIMITS):
    return parse_program_request(Q, None, None if options is None else json.dumps(options), parameters or {},
                                 default_program="self-consistency", limits=limits, max_deadline_s=60)


def test_a_program_asking_more_tokens_than_the_operator_allows_is_refused_with_the_figures():
    limits = Limits(max_budget=64, max_program_tokens=10_000)
    assert program({"budget": 10, "max_tokens": 1000}, limits=limits).program.budget == 10  # 10,000: at the limit
    with pytest.raises(RequestError, match=r"options.budget: .* up to 10240 tokens; this server allows 10000"):
        program({"budget": 16, "max_tokens": 640}, limits=limits)
    with pytest.raises(RequestError, match=r"up to 13248 tokens"):  # 12 x (3 x 256 + 336)
        program({"budget": 12, "rollout_tokens": 336}, {"program": "mcts"}, limits=limits)


def test_each_program_bounds_its_own_tokens():
    from scheduler_backend.registry import _REGISTRY

    limits = Limits()
    asked = {name: f.tokens_asked({k: s.default for k, s in f.specs().items()}, limits) for name, f in _REGISTRY.items()}
    assert asked["self-consistency"] == 16 * 640
    assert asked["mcts"] == 12 * (3 * 256 + 384)
    assert asked["cot-probe"] == 32 * (64 + 20)
    create("mcts", Q, {}, Limits(max_program_tokens=asked["mcts"]))
    with pytest.raises(RequestError):
        create("mcts", Q, {}, Limits(max_program_tokens=asked["mcts"] - 1))


def test_client_id_comes_from_the_parameter_or_the_forwarded_header_and_is_not_an_option():
    assert program(parameters={"client_id": "team-a"}).client_id == "team-a"
    assert program(parameters={"dynasor-client-id": "team-b"}).client_id == "team-b"
    assert program().client_id is None
    with pytest.raises(RequestError, match="client_id"):
        program(parameters={"client_id": "a b/../c"})


def test_cancel_program_is_recognised_and_checked():
    target = "0123456789abcdef0123456789abcdef"
    assert program(parameters={"cancel_program": target}) == CancelRequest(target)
    with pytest.raises(RequestError, match="cancel_program: expected a program_id"):
        program(parameters={"cancel_program": "../x"})


def test_duplicate_and_deep_options_are_refused_by_the_dynasor_door():
    with pytest.raises(RequestError, match="options: duplicate key 'budget'"):
        parse_program_request(Q, None, '{"budget": 100, "budget": 1}', {}, default_program="self-consistency",
                              limits=Limits(), max_deadline_s=60)
    with pytest.raises(RequestError, match="options: JSON nested"):
        parse_program_request(Q, None, "[" * 100_000, {}, default_program="self-consistency", limits=Limits(), max_deadline_s=60)


def test_the_default_allocation_is_a_shipped_calibration_for_the_program_it_was_fitted_on(tmp_path):
    doc = {"program": "self-consistency", "policy": {"kind": "threshold", "settle": 0.6, "detect_step": 4},
           "curve": {"kind": "curve", "a": 6.0, "b": 2.0, "detect_step": 4}}
    (tmp_path / "cal.json").write_text(json.dumps(doc))
    default = default_allocation("cal:curve", tmp_path)
    assert default is not None and default.policies["self-consistency"]["a"] == 6.0

    def request(options=None, program=None):
        return parse_program_request(Q, program, None if options is None else json.dumps(options), {},
                                     default_program="self-consistency", limits=Limits(), max_deadline_s=60,
                                     calibration_dir=tmp_path, default=default)

    assert request().program.policy.a == 6.0, "no allocation asked for: the calibration's curve"
    assert request({"settle_threshold": 0.9}).program.policy.settle == 0.9, "a request's own threshold wins"
    assert request({"calibration": "cal"}).program.policy.settle == 0.6
    assert not hasattr(request(program="mcts").program.policy, "a"), "fitted on self-consistency only"
    assert default_allocation("", tmp_path) is None
    with pytest.raises(RequestError, match="parameters.default_allocation: no calibration named 'missing'"):
        default_allocation("missing", tmp_path)
    with pytest.raises(RequestError, match="parameters.default_allocation: two calibrations for self-consistency"):
        default_allocation("cal, cal:curve", tmp_path)


def test_each_program_gets_the_default_calibration_fitted_on_it(tmp_path):
    for name, program, settle in (("math", "self-consistency", 0.6), ("code", "code", 0.9)):
        doc = {"program": program, "policy": {"kind": "threshold", "settle": settle, "detect_step": 2}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    default = default_allocation("math, code", tmp_path)
    question = 'def f(x: int) -> int:\n    """x + 1.\n    >>> f(1)\n    2\n    """\n'
    for program, settle in (("self-consistency", 0.6), ("code", 0.9)):
        built = parse_program_request(question, program, None, {}, default_program="self-consistency", limits=Limits(),
                                      max_deadline_s=60, calibration_dir=tmp_path, default=default).program
        assert built.policy.settle == settle


def test_the_quality_floor_comes_from_the_operator_and_a_request_may_set_its_own():
    operator = QualityFloor(units=4, action="refuse", count_probed=True)

    def request(options):
        return parse_program_request(Q, "self-consistency", json.dumps(options), {}, default_program="self-consistency",
                                     limits=Limits(), max_deadline_s=60, default_floor=operator)

    assert request({}).floor == operator
    assert request({"floor": 2, "floor_action": "degrade"}).floor == QualityFloor(2, "degrade", count_probed=True)
    for options, message in (({"floor": -1}, "options.floor: expected a whole number"),
                             ({"floor": 2.5}, "options.floor: expected a whole number"),
                             ({"floor_action": "drop"}, "options.floor_action: must be one of degrade, refuse"),
                             ({"floor": 20, "budget": 8}, r"options.floor: 20 knob units is above the program's budget \(8\)")):
        with pytest.raises(RequestError, match=message):
            request(options)


def test_drain_is_recognised_and_its_grace_checked():
    from program_request import DrainRequest

    assert program(parameters={"drain": 30}) == DrainRequest(30.0)
    assert program(parameters={"drain": 0.5}) == DrainRequest(0.5)
    for bad in (-1, float("nan"), float("inf"), True, "30", 1e9):
        with pytest.raises(RequestError, match=r"drain: expected the grace period in seconds"):
            program(parameters={"drain": bad})
