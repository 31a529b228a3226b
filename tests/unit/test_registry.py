"""The door: every refusal names its field, defaults build sensible programs, and plugins come from
server configuration only."""
from __future__ import annotations

import pytest

from engines.policy_stream import policy_inputs
from scheduler_backend import registry
from scheduler_backend.allocation import CurvePolicy, ThresholdPolicy, UniformPolicy
from scheduler_backend.engine import GenerateCall, SamplingSpec
from scheduler_backend.errors import RequestError
from scheduler_backend.program import ReasoningProgram, StopReason
from scheduler_backend.programs import CotProbe, Mcts, Rebase, SelfConsistency
from scheduler_backend.registry import Limits, ProgramFactory, create

Q = "What is 2 + 3?"


def _refused(field: str, name: str = "self-consistency", question: object = Q, options: object = None,
             limits: Limits | None = None) -> str:
    with pytest.raises(RequestError) as err:
        create(name, question, {} if options is None else options, limits)
    message = str(err.value)
    assert message.startswith(field + ":"), message
    return message


def test_builtin_programs_are_registered_and_build_with_defaults():
    assert {"self-consistency", "rebase", "mcts", "cot-probe"} <= set(registry.programs())
    kinds = {name: type(create(name, Q, {})) for name in ("self-consistency", "rebase", "mcts", "cot-probe")}
    assert kinds == {"self-consistency": SelfConsistency, "rebase": Rebase, "mcts": Mcts, "cot-probe": CotProbe}


def test_self_consistency_defaults_suit_a_small_model_on_grade_school_problems():
    program = create("self-consistency", Q, {})
    assert program.budget == 16 and program.round_size == 4 and program.first_round == 4
    assert program.sampling.max_tokens == 640 and program.sampling.temperature == 0.5
    assert program.sampling.top_k == 50 and program.sampling.top_p == 1.0 and program.prompt == "math"
    assert program.policy == ThresholdPolicy(settle=0.8, detect_step=4)
    assert registry.defaults("self-consistency")["budget"] == 16


def test_options_reach_the_program_and_its_policy():
    program = create("self-consistency", Q, {"budget": 24, "round_size": 6, "temperature": 1, "max_tokens": 100,
                                            "settle_threshold": 0.9, "detect_step": 8, "hopeless_threshold": 0.2,
                                            "answer_format": "gsm8k"})
    assert (program.budget, program.round_size, program.first_round, program.answer_format) == (24, 6, 8, "gsm8k")
    assert program.sampling.temperature == 1.0 and program.sampling.max_tokens == 100
    assert program.policy == ThresholdPolicy(settle=0.9, detect_step=8, hopeless=0.2)


def test_cot_probe_effort_presets_and_explicit_overrides():
    crazy = create("cot-probe", Q, {"effort": "crazy"})
    assert (crazy.window, crazy.chunk_sampling.max_tokens) == (2, 32)
    mixed = create("cot-probe", Q, {"effort": "mild", "chunk_tokens": 16})
    assert (mixed.window, mixed.chunk_sampling.max_tokens) == (8, 16)
    assert create("cot-probe", Q, {}).policy.settle == 1.0  # the Dynasor rule: the whole window agrees


def test_allocation_policy_object_is_used_and_validated():
    program = create("self-consistency", Q, {"allocation": {"kind": "curve", "a": 10.0, "b": 3.0, "detect_step": 6}})
    assert isinstance(program.policy, CurvePolicy) and program.first_round == 6
    _refused("options.allocation.kind", options={"allocation": {"kind": "magic"}})
    _refused("options.allocation.a", options={"allocation": {"kind": "curve", "b": 1.0}})
    _refused("options.allocation", options={"allocation": 3})
    _refused("options.settle_threshold", options={"allocation": {"kind": "threshold"}, "settle_threshold": 0.5})
    _refused("options.allocation.check_every", options={"allocation": {"kind": "threshold", "check_every": 0}})
    _refused("options.allocation.predictor.b", options={"allocation": {"kind": "threshold", "predictor": {"a": 2}}})


def test_every_policy_kind_builds_a_program_with_its_own_allocation():
    uniform = create("self-consistency", Q, {"allocation": {"kind": "uniform"}})
    assert isinstance(uniform.policy, UniformPolicy) and uniform.first_round == uniform.round_size
    dynamic = create("self-consistency", Q, {"allocation": {"kind": "curve", "a": 8.0, "b": 3.0, "dynamic": True}})
    assert dynamic.policy.dynamic and dynamic.allocation.policy is dynamic.policy
    sparse = create("mcts", Q, {"allocation": {"kind": "threshold", "check_every": 3, "predictor": {"a": 5.0, "b": 1.0}}})
    assert sparse.policy.check_every == 3 and sparse.allocation.budget == sparse.budget
    assert create("mcts", Q, {}).allocation is not create("mcts", Q, {}).allocation  # one per program


@pytest.mark.parametrize("question", [None, "", "   \n", 42])
def test_missing_or_empty_question_is_refused(question):
    _refused("text_input", question=question)


def test_oversized_question_is_refused():
    message = _refused("text_input", question="x" * 101, limits=Limits(max_question_chars=100))
    assert "100" in message


def test_unknown_program_lists_the_known_ones():
    message = _refused("program", name="foo")
    assert "'foo'" in message and "self-consistency" in message and "cot-probe" in message
    _refused("program", name=None)


@pytest.mark.parametrize("field, value", [
    ("budget", -3), ("budget", 0), ("budget", "16"), ("budget", True), ("budget", 2.5), ("budget", None),
    ("temperature", "hot"), ("temperature", -0.1), ("temperature", float("nan")), ("temperature", False),
    ("top_p", 0), ("max_tokens", 0), ("answer_format", "latex"), ("settle_threshold", 1.5),
    ("detect_step", 0), ("hopeless_threshold", -1), ("round_size", 0), ("round_size", [4]),
])
def test_bad_values_name_the_field(field, value):
    message = _refused(f"options.{field}", options={field: value})
    assert repr(value) in message


def test_negative_budget_message_gives_the_range():
    message = _refused("options.budget", options={"budget": -3})
    assert message == "options.budget: must be an integer in [1, 64], got -3"


def test_oversized_values_are_refused_against_the_server_limits():
    limits = Limits(max_budget=8, max_tokens=128, max_parallel=4, max_depth=5)
    _refused("options.budget", options={"budget": 9}, limits=limits)
    _refused("options.max_tokens", options={"max_tokens": 129}, limits=limits)
    _refused("options.round_size", options={"round_size": 5}, limits=limits)
    _refused("options.width", name="rebase", options={"width": 5}, limits=limits)
    _refused("options.max_depth", name="mcts", options={"max_depth": 6}, limits=limits)
    _refused("options.chunk_tokens", name="cot-probe", options={"chunk_tokens": 129}, limits=limits)
    _refused("options.rollout_tokens", name="mcts", options={"rollout_tokens": 10_000})


def test_unknown_options_are_refused_by_name():
    message = _refused("options.bugdet", options={"bugdet": 4})
    assert "budget" in message  # the known ones are listed
    _refused("options.width", options={"width": 4})  # rebase's, not self-consistency's
    _refused("options.max_tokens", name="cot-probe", options={"max_tokens": 64})  # chunk_tokens instead
    _refused("options", options=["budget", 4])


def test_inconsistent_thresholds_are_refused():
    _refused("options.hopeless_threshold", options={"hopeless_threshold": 0.9, "settle_threshold": 0.8})
    _refused("options.hopeless_step", options={"hopeless_step": 8})
    _refused("options.hopeless_step", options={"hopeless_threshold": 0.1, "detect_step": 8, "hopeless_step": 4})


def _echo_factory() -> ProgramFactory:
    def build(question, options, policy):
        return SelfConsistency(question, options["budget"], policy, sampling=SamplingSpec(max_tokens=8))
    return ProgramFactory("echo", build, {"budget": registry.Int(2, hi="max_budget")})


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_register_in_code(scratch_registry):
    registry.register("echo", _echo_factory())
    assert "echo" in registry.programs()
    assert create("echo", Q, {}).budget == 2
    with pytest.raises(ValueError):
        registry.register("echo", _echo_factory())
    with pytest.raises(ValueError):
        registry.register("Bad Name", _echo_factory())


def test_plugins_register_by_config_path(scratch_registry, tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(
        "from scheduler_backend.registry import Int, ProgramFactory\n"
        "from scheduler_backend.programs import SelfConsistency\n"
        "from scheduler_backend.engine import SamplingSpec\n"
        "def _build(q, o, policy):\n"
        "    sampling = SamplingSpec(max_tokens=o['max_tokens'])\n"
        "    return SelfConsistency(q, o['budget'], policy, sampling=sampling, round_size=o['width'])\n"
        "factory = ProgramFactory('wide-sc', _build, {'width': Int(8)})\n"
        "not_a_factory = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "wide-sc" not in registry.programs()
    assert registry.load_plugins(["my_plugin:factory"]) == ["wide-sc"]
    program: ReasoningProgram = create("wide-sc", Q, {"width": 3})
    assert program.round_size == 3 and program.stop_reason is None
    _refused("options.width", name="wide-sc", options={"width": "3"})
    for bad in ("my_plugin", "my_plugin:missing", "no_such_module_xyz:factory", "my_plugin:not_a_factory"):
        with pytest.raises(ValueError, match="plugins"):
            registry.load_plugins([bad])


def test_created_programs_have_not_started():
    program = create("rebase", Q, {"width": 2, "budget": 6})
    assert not program.done and program.steps_used() == 0 and program.stop_reason is not StopReason.CAP
    assert program.predicted_remaining() == 6


def test_min_tokens_reaches_the_engine_request_and_may_not_exceed_max_tokens():
    program = create("self-consistency", Q, {"max_tokens": 100, "min_tokens": 60})
    assert program.sampling.min_tokens == 60
    assert policy_inputs(GenerateCall("r", program.next_steps()[0].sampling))["sampling_parameters"].count('"min_tokens": 60') == 1
    assert "max_tokens (100)" in _refused("options.min_tokens", options={"max_tokens": 100, "min_tokens": 101})
