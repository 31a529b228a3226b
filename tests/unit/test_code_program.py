"""The `code` program on the scripted engine and a real sandbox: samples vote by behaviour, the
answer is a runnable program of the largest cluster, the hidden tests never take part, and the
program stops as its certaindex and allocation say. Also: HumanEval as shipped, graded right."""
from __future__ import annotations

import itertools

import pytest

from engines.scripted import ScriptedEngine
from scheduler_backend.allocation import ThresholdPolicy, UniformPolicy
from scheduler_backend.code_behaviour import behaviours, code_problem, entry_point, extract_program, passes_tests, vote
from scheduler_backend.datasets import is_correct, load
from scheduler_backend.engine import SamplingSpec
from scheduler_backend.errors import RequestError
from scheduler_backend.program import StopReason
from scheduler_backend.programs import CodeConsistency
from scheduler_backend.registry import create
from scheduler_backend.replay import build_table, uniform
from tests.unit.test_programs import drive

QUESTION = ('from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n'
            '    """The even numbers of xs, in order.\n    >>> evens([1, 2, 3, 4])\n    [2, 4]\n    """\n')
RIGHT = "```python\ndef evens(xs):\n    return [x for x in xs if x % 2 == 0]\n```"
RIGHT_TOO = "Here it is:\n```python\nfrom typing import List\ndef evens(xs: List[int]) -> List[int]:\n" \
            "    out = []\n    for x in xs:\n        if not x % 2:\n            out.append(x)\n    return out\n```"
WRONG = "```python\ndef evens(xs):\n    return [x for x in xs if x % 2]\n```"
TESTS = "def check(candidate):\n    assert candidate([1, 2, 3, 4]) == [2, 4]\n    assert candidate([7, 8, 8]) == [8, 8]\n"


def _code(budget: int = 8, policy=None) -> CodeConsistency:
    return CodeConsistency(QUESTION, budget, policy or ThresholdPolicy(settle=0.8, detect_step=4),
                           sampling=SamplingSpec(max_tokens=200), round_size=4, first_round=4)


def test_samples_that_behave_alike_settle_and_the_answer_is_a_runnable_program():
    texts = itertools.cycle([RIGHT, RIGHT_TOO])
    state = drive(_code(), ScriptedEngine(lambda call, i: next(texts)))
    assert state.stop_reason is StopReason.SETTLED and state.certaindex == 1.0 and state.steps == 4
    assert state.answer is not None and state.answer.startswith("from typing import List")
    assert passes_tests(state.answer, TESTS, "evens")  # runnable as it is, imports included
    assert state.extra["clusters"][0]["size"] == 4


def test_the_largest_behaviour_cluster_wins_over_the_first_sample():
    texts = iter([WRONG, RIGHT, RIGHT_TOO, "no code at all", RIGHT, WRONG, RIGHT_TOO, RIGHT])
    program = _code(policy=UniformPolicy())
    state = drive(program, ScriptedEngine(lambda call, i: next(texts)))
    assert state.stop_reason is StopReason.CAP and state.steps == 8
    assert passes_tests(state.answer, TESTS, "evens")
    assert sorted(c["size"] for c in state.extra["clusters"]) == [2, 5]
    assert 0.0 < state.certaindex < 1.0


def test_the_prompt_asks_for_a_function_and_the_program_is_never_probed():
    engine = ScriptedEngine(lambda call, i: RIGHT)
    drive(_code(), engine)
    system, user = engine.calls[0].messages
    assert "python" in system.content.lower() and user.content == QUESTION
    assert _code().probe_steps(["def evens(xs):\n    return"]) == []


def test_a_body_only_sample_is_placed_under_the_signature():
    problem = code_problem(QUESTION)
    source = extract_program("    return [x for x in xs if x % 2 == 0]", problem)
    assert source is not None and passes_tests(source, TESTS, "evens")
    assert extract_program("```python\ndef evens(:\n```", problem) is None


def test_the_entry_point_is_the_function_left_without_a_body():
    helper = "def helper(s: str):\n    return s[::-1]\n\n\ndef solve(s: str):\n    \"\"\"Use helper.\"\"\"\n"
    assert entry_point(helper) == "solve"
    for bad in ("What is 2 + 2?", "x = 1\n"):
        with pytest.raises(RequestError, match=r"^text_input: "):
            entry_point(bad)


def test_the_registry_offers_code_and_refuses_a_question_without_a_function():
    program = create("code", QUESTION, {"budget": 4})
    assert isinstance(program, CodeConsistency) and program.sampling.max_tokens == 512
    with pytest.raises(RequestError, match=r"^text_input: a code question"):
        create("code", "How many apples?", {})
    with pytest.raises(RequestError, match=r"^options.answer_format: unknown option"):
        create("code", QUESTION, {"answer_format": "boxed"})


def test_humaneval_ships_whole_and_its_reference_solutions_pass_their_hidden_tests():
    problems = load("humaneval")
    assert len(problems) == 164 and all(p.tests and p.entry_point for p in problems)
    assert all(code_problem(p.question).entry_point == p.entry_point for p in problems)
    first = problems[0]
    assert not is_correct(first, first.question)  # the bare signature does nothing
    assert not is_correct(first, None)


def test_code_traces_replay_per_sample_with_the_tests_verdicts():
    samples = [{"answer": "behaviour:a", "tokens": 10, "finish_reason": "stop", "correct": True}] * 3 + \
              [{"answer": "behaviour:b", "tokens": 10, "finish_reason": "stop", "correct": False}]
    trace = {"id": "t", "program": "code", "question": QUESTION, "gold": None, "correct": True, "budget": 4,
             "samples": samples, "history": [{"steps": 4, "certaindex": 0.5, "answer": "x", "tokens_used": 40,
                                              "correct": True}], "options": {"round_size": 4}}
    table = build_table([trace], orderings=4)
    assert table.per_sample
    out = uniform(table, 4)
    assert out.correct.all()  # majority of a,a,a,b is a, which the tests passed
    flipped = {**trace, "id": "u", "samples": [{**s, "correct": not s["correct"]} for s in samples]}
    assert not uniform(build_table([flipped], orderings=4), 4).correct.any()


def test_examples_written_as_values_become_probe_calls():
    question = ('def pick(arr, k):\n    """The k-th smallest.\n    Example:\n        Input: arr = [3, 1, 2], k = 2\n'
                '        Output: 2\n        Input: arr = [5], k = 1\n        Output: 5\n    """\n')
    assert code_problem(question).calls == ("pick([3, 1, 2], 2)", "pick([5], 1)")
    single = 'def first(arr):\n    """Example 1:\n        Input: [4,2,3]\n        Output: 4\n    """\n'
    assert code_problem(single).calls == ("first([4,2,3])",)


def test_without_any_call_to_probe_only_identically_written_programs_agree():
    question = 'def area(grid, capacity):\n    """Count the fills.\n    """\n'
    problem = code_problem(question)
    assert problem.calls == ()
    texts = ["```python\ndef area(grid, capacity):\n    return sum(map(sum, grid)) // capacity\n```"] * 2 + \
            ["```python\ndef area(grid, capacity):\n    total = sum(map(sum, grid))\n    return total // capacity\n```",
             "no code"]
    prints = behaviours([extract_program(t, problem) for t in texts], problem)
    assert prints[0] == prints[1] != prints[2] and prints[3] is None
    assert all(p.startswith("behaviour:ast-") for p in prints[:3])


def test_a_vote_outside_the_program_answers_as_the_program_does():
    texts = [WRONG, RIGHT, RIGHT_TOO, "no code at all"]
    voted = vote(texts, code_problem(QUESTION))
    assert voted.prints[1] == voted.prints[2] != voted.prints[0] and voted.prints[3] is None
    assert voted.chosen == 1 and passes_tests(voted.answer, TESTS, "evens")
    assert vote(["no code"], code_problem(QUESTION)).answer is None
