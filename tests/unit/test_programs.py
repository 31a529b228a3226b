"""The built-in programs, driven on the scripted engine: each reaches an answer, and each stops for
the reason its certaindex and allocation policy give (settled, cap, hopeless, natural end)."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from engines.scripted import ScriptedEngine
from scheduler_backend.allocation import CurvePolicy, ThresholdPolicy, UniformPolicy
from scheduler_backend.engine import GenerateCall, SamplingSpec
from scheduler_backend.program import (
    GenerateStep,
    ProgramState,
    ReasoningProgram,
    Sample,
    ScoreStep,
    Step,
    StepResult,
    StopReason,
)
from scheduler_backend.programs import CotProbe, Mcts, Rebase, SelfConsistency
from scheduler_backend.programs.rebase import allocate

QUESTION = "Tom has 2 apples and buys 3 more. How many apples does he have?"
SAMPLING = SamplingSpec(max_tokens=64)


async def _run_step(engine: ScriptedEngine, step: Step) -> StepResult:
    if isinstance(step, ScoreStep):
        return StepResult(step.key, scores=await engine.score(step.question, step.candidates))
    call = GenerateCall(f"p:{step.key}", step.sampling, step.messages, step.prompt)
    samples: dict[int, Sample] = {}
    async for deltas in engine.generate(call):
        for d in deltas:
            s = samples.setdefault(d.index, Sample("", 0))
            s.text += d.text
            s.num_tokens += d.num_tokens
            if d.finished:
                s.finish_reason = d.finish_reason
    return StepResult(step.key, samples=[samples[i] for i in sorted(samples)])


async def _drive_async(program: ReasoningProgram, engine: ScriptedEngine) -> ProgramState:
    tasks: dict[asyncio.Task, Step] = {}
    while not program.done:
        for step in program.next_steps():
            tasks[asyncio.ensure_future(_run_step(engine, step))] = step
        assert tasks, f"{program.name} issued no step and is not done"
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=lambda t: list(tasks).index(t)):
            tasks.pop(task)
            program.on_result(task.result())
    for task in tasks:
        task.cancel()
    return program.state()


def drive(program: ReasoningProgram, engine: ScriptedEngine) -> ProgramState:
    """The test's driver: next_steps -> engine -> on_result until the program stops."""
    return asyncio.run(_drive_async(program, engine))


def _last(call: GenerateCall) -> str:
    return call.messages[-1].content if call.messages and call.messages[-1].role == "assistant" else ""


# --- self-consistency -----------------------------------------------------------------------------

def _sc(budget: int = 16, **policy) -> SelfConsistency:
    return SelfConsistency(QUESTION, budget, ThresholdPolicy(**policy), sampling=SAMPLING, round_size=4, first_round=4)


def _distinct_answers():
    counter = itertools.count()
    return lambda call, i: f"I think it is \\boxed{{{next(counter)}}}."


def test_self_consistency_settles_early_on_agreeing_samples():
    engine = ScriptedEngine(lambda call, i: "2 + 3 = 5 apples. \\boxed{5}")
    state = drive(_sc(), engine)
    assert state.stop_reason is StopReason.SETTLED
    assert state.answer == "5" and state.certaindex == 1.0
    assert state.steps == 4 < state.budget
    assert [c.sampling.n for c in engine.calls] == [4]
    assert state.extra["clusters"] == [{"answer": "5", "size": 4}]
    assert state.tokens_used == 4 * 7


def test_self_consistency_runs_to_the_cap_on_disagreeing_samples():
    engine = ScriptedEngine(_distinct_answers())
    state = drive(_sc(budget=10), engine)
    assert state.stop_reason is StopReason.CAP
    assert state.steps == 10
    assert [c.sampling.n for c in engine.calls] == [4, 4, 2]  # never more than the budget
    assert state.certaindex == pytest.approx(0.0, abs=1e-9)


def test_self_consistency_cuts_a_hopeless_program_before_the_cap():
    engine = ScriptedEngine(_distinct_answers())
    state = drive(_sc(budget=32, hopeless=0.1), engine)
    assert state.stop_reason is StopReason.HOPELESS
    assert state.steps == 8 < 32  # cut at hopeless_step (twice the detect step)
    assert state.answer is not None  # a cut program still returns its best guess


def test_self_consistency_spends_the_budget_its_curve_set_at_detection():
    """First round 5, 5, 7, 7: certaindex 0.5, so the curve 24 exp(-4 c) = 3.25 gives 3 more
    samples, and the program stops at 7 although the later samples make it less certain."""
    counter = itertools.count()

    def script(call: GenerateCall, i: int) -> str:
        n = next(counter)
        return f"\\boxed{{{5 if n < 2 else 7 if n < 4 else 10 + n}}}"

    engine = ScriptedEngine(script)
    policy = CurvePolicy(a=24.0, b=4.0, detect_step=4)
    program = SelfConsistency(QUESTION, 32, policy, sampling=SAMPLING, round_size=1, first_round=4)
    state = drive(program, engine)
    assert program.answers == ["5", "5", "7", "7", "14", "15", "16"] and state.steps == 7
    assert state.certaindex < 0.5
    assert state.stop_reason is StopReason.SETTLED
    assert [c.sampling.n for c in engine.calls] == [4, 1, 1, 1]


def test_a_swapped_in_uniform_policy_runs_to_the_cap():
    program = _sc(budget=8)
    program.allocate(UniformPolicy())
    state = drive(program, ScriptedEngine(lambda call, i: "\\boxed{5}"))
    assert state.stop_reason is StopReason.CAP and state.steps == 8 and state.certaindex == 1.0


def test_self_consistency_prompt_asks_for_a_boxed_answer_and_first_round_is_the_detect_step():
    engine = ScriptedEngine(lambda call, i: "\\boxed{5}" if i % 2 else "\\boxed{6}")
    program = SelfConsistency(QUESTION, 12, ThresholdPolicy(detect_step=6), sampling=SAMPLING,
                              round_size=3, first_round=6)
    drive(program, engine)
    roles = [m.role for m in engine.calls[0].messages]
    assert roles == ["system", "user"] and "\\boxed{}" in engine.calls[0].messages[0].content
    assert engine.calls[0].messages[1].content == QUESTION
    assert [c.sampling.n for c in engine.calls] == [6, 3, 3]


def test_stopped_program_ignores_late_results_but_counts_their_tokens():
    program = _sc()
    program.next_steps()
    program.stop(StopReason.DEADLINE)
    program.on_result(StepResult("round1", samples=[Sample("\\boxed{5}", 3)]))
    assert program.steps_used() == 0 and program.tokens_used == 3
    assert program.predicted_remaining() == 0.0 and program.next_steps() == []


# --- rebase and mcts: a scorer that prefers correct steps -----------------------------------------

def _tree_script(call: GenerateCall, i: int) -> str:
    """Depth 0: a right (even i) or wrong (odd i) first step; then an answer following the step.
    Text past the stop string is there to prove the engine cuts it."""
    partial = _last(call)
    if not partial:
        step = "2 + 3 = 5 apples." if i % 2 == 0 else "2 + 3 = 6 apples."
        return step + "\n\nso more text after the stop string"
    answer = "5" if "= 5" in partial else "6"
    return f"The answer is \\boxed{{{answer}}}."


def _prefers_correct(question: str, candidate: str) -> float:
    return 0.9 if "= 5" in candidate else 0.1


def test_allocate_is_proportional_to_softmax_and_capped():
    assert allocate([0.9, 0.1], 4, 0.2, cap=4) == [4, 0]
    assert allocate([0.9, 0.1], 4, 0.2, cap=3) == [3, 1]
    assert allocate([0.5, 0.5, 0.5], 6, 0.2, cap=6) == [2, 2, 2]
    assert allocate([0.5], 6, 0.2, cap=2) == [2]  # capped short of the total


def test_rebase_expands_the_rewarded_branches_and_answers():
    engine = ScriptedEngine(_tree_script, _prefers_correct)
    program = Rebase(QUESTION, 32, ThresholdPolicy(detect_step=8), sampling=SAMPLING, width=4, children=2)
    state = drive(program, engine)
    assert engine.calls[0].sampling.n == 4  # the root gets the whole width; `children` caps later depths
    assert state.answer == "5"
    assert state.stop_reason in (StopReason.FINISHED, StopReason.SETTLED)
    assert all(c.sampling.stop == ("\n\n",) for c in engine.calls)
    assert all("more text" not in cand for _, cands in engine.score_calls for cand in cands)
    # depth 1: the two wrong partial solutions get no children, the right ones all four (2 each)
    depth1 = [c for c in engine.calls if _last(c)]
    assert sum(c.sampling.n for c in depth1 if "= 5" in _last(c)) == 4
    assert not [c for c in depth1 if "= 6" in _last(c)]
    assert state.certaindex > 0.8 and state.steps == 8


def test_rebase_stops_at_its_expansion_budget():
    engine = ScriptedEngine(lambda call, i: "Let me think some more.", _prefers_correct)
    program = Rebase(QUESTION, 10, ThresholdPolicy(), sampling=SAMPLING, width=4, children=2, max_depth=20)
    state = drive(program, engine)
    assert state.stop_reason is StopReason.CAP
    assert state.steps == 10 and sum(c.sampling.n for c in engine.calls) == 10
    assert state.answer is None


def test_mcts_finds_the_rewarded_answer():
    engine = ScriptedEngine(_tree_script, _prefers_correct)
    policy = ThresholdPolicy(settle=0.85, detect_step=4)
    program = Mcts(QUESTION, 16, policy, sampling=SAMPLING, children=2, max_depth=4)
    state = drive(program, engine)
    assert state.answer == "5"
    assert state.stop_reason is StopReason.SETTLED
    assert state.certaindex >= 0.85 and 4 <= state.steps < 16
    assert len(engine.score_calls) == state.steps  # one reward per iteration
    best = max(program.root.children, key=lambda c: c.visits)
    assert "= 5" in best.text


def test_mcts_runs_to_its_iteration_cap_when_never_certain():
    engine = ScriptedEngine(lambda call, i: f"step {i}" if call.sampling.stop else "\\boxed{1}", lambda q, c: 0.3)
    program = Mcts(QUESTION, 6, ThresholdPolicy(), sampling=SAMPLING, children=2, max_depth=5)
    state = drive(program, engine)
    assert state.stop_reason is StopReason.CAP and state.steps == 6
    assert state.answer == "1"
    rollouts = [c for c in engine.calls if not c.sampling.stop]
    assert rollouts and all(c.sampling.max_tokens == program.rollout_sampling.max_tokens for c in rollouts)


# --- rebase and mcts: text cut by the token limit -------------------------------------------------

# 14 words: cut at 12, the text ends on the intermediate "5" (the old last-number answer).
_LONG = "Tom had 2 apples, then 2 + 3 = 5 apples, and he eats one. \\boxed{4}"


def _mcts_rollouts(rollout: str, rollout_tokens: int) -> Mcts:
    engine = ScriptedEngine(lambda call, i: "Let me think." if call.sampling.stop else rollout, lambda q, c: 0.5)
    program = Mcts(QUESTION, 4, ThresholdPolicy(), sampling=SAMPLING, children=2, max_depth=3,
                   rollout_tokens=rollout_tokens)
    drive(program, engine)
    return program


def test_mcts_rollouts_cut_by_the_token_limit_vote_only_with_a_stated_answer():
    cut = _mcts_rollouts(_LONG, rollout_tokens=12)
    assert len(cut.rollouts) == 4 and [a for a, _ in cut.rollouts] == [None] * 4
    assert cut.state().answer is None
    whole = _mcts_rollouts(_LONG, rollout_tokens=64)
    assert whole.state().answer == "4"
    stated = _mcts_rollouts("So \\boxed{5}, which I now check: 2 + 3 = 5, then 5 - 1 = 4 and", rollout_tokens=12)
    assert [a for a, _ in stated.rollouts] == ["5"] * 4


def test_mcts_scores_a_step_that_states_its_answer_before_the_cut_as_that_answer():
    engine = ScriptedEngine(lambda call, i: "so \\boxed{5} and 5 + 1 = 6 and more words" if call.sampling.stop else "",
                            lambda q, c: 0.5)
    program = Mcts(QUESTION, 3, ThresholdPolicy(), sampling=SamplingSpec(max_tokens=6), children=1, max_depth=3)
    drive(program, engine)
    assert program.rollouts == [("5", 0.5)]  # scored once as the whole solution, which ends the search
    [child] = program.root.children
    assert child.terminal and child.text == "so \\boxed{5} and 5 + 1"


def _rebase_one_step(step: str, max_tokens: int) -> Rebase:
    engine = ScriptedEngine(lambda call, i: step, lambda q, c: 0.5)
    program = Rebase(QUESTION, 8, ThresholdPolicy(), sampling=SamplingSpec(max_tokens=max_tokens), width=2,
                     max_depth=1)
    drive(program, engine)
    return program


def test_rebase_never_answers_with_the_last_number_of_a_cut_step():
    cut = _rebase_one_step(_LONG, max_tokens=12)
    assert not cut.finished and len(cut.live) == 2 and all(c.text.endswith("= 5 apples, and") for c in cut.live)
    assert cut.state().answer is None
    ended = _rebase_one_step("Tom had 2 apples, then 2 + 3 = 5 apples.\n\nand then", max_tokens=12)
    assert not ended.finished and ended.state().answer == "5"  # a whole step's result is still a best guess
    stated = _rebase_one_step("The answer is \\boxed{5} because 2 + 3 = 5 and 6 - 1 = 5 too", max_tokens=8)
    assert [c.answer for c in stated.finished] == ["5", "5"] and stated.state().answer == "5"


# --- cot-probe ------------------------------------------------------------------------------------

THOUGHT = " ".join(f"w{i}" for i in range(400))


def _cot_script(probe: str, thought: str = THOUGHT):
    """Probes get `probe`; a chunk continues `thought` from where the thought so far stops."""
    def script(call: GenerateCall, i: int) -> str:
        partial = _last(call)
        return probe if partial.endswith("\\boxed{") else thought[len(partial):]
    return script


def _cot(budget: int = 12, window: int = 3) -> CotProbe:
    policy = ThresholdPolicy(settle=1.0, detect_step=1)
    return CotProbe(QUESTION, budget, policy, sampling=SAMPLING, window=window, chunk_tokens=8)


def test_cot_probe_settles_when_the_last_probes_agree():
    engine = ScriptedEngine(_cot_script("5} \\]"))
    state = drive(_cot(), engine)
    assert state.stop_reason is StopReason.SETTLED
    assert state.answer == "5"
    assert 3 <= state.steps < 12
    probe = next(c for c in engine.calls if _last(c).endswith("\\boxed{"))
    assert probe.sampling.max_tokens == 20 and probe.sampling.temperature == 0.6 and probe.sampling.top_k == 50
    assert "**Final Answer**" in _last(probe) and [m.role for m in probe.messages] == ["user", "assistant"]


def test_cot_probe_does_not_settle_while_the_probe_hedges():
    engine = ScriptedEngine(_cot_script("5} \\] Wait, let me check again"))
    state = drive(_cot(budget=6), engine)
    assert state.stop_reason is StopReason.CAP
    assert state.steps == 6 and state.extra["hedging"]
    assert state.answer == "5"  # the best answer so far is still the probed one


def test_cot_probe_finishes_when_the_thought_ends_by_itself():
    engine = ScriptedEngine(_cot_script("9}", thought="So 2 + 3 = 5, \\boxed{5}"))
    state = drive(_cot(), engine)
    assert state.stop_reason is StopReason.FINISHED
    assert state.answer == "5" and state.steps == 1


def test_cot_probe_issues_the_next_chunk_with_the_probe_and_counts_late_probes():
    program = _cot()
    [chunk0] = program.next_steps()
    assert isinstance(chunk0, GenerateStep) and chunk0.sampling.max_tokens == 8
    program.on_result(StepResult(chunk0.key, samples=[Sample("a b c", 3, "length")]))
    chunk1, probe0 = program.next_steps()
    assert probe0.messages[-1].content.startswith("a b c\n\n...") and chunk1.messages[-1].content == "a b c"
    program.on_result(StepResult(chunk1.key, samples=[Sample(" d e", 2, "length")]))
    chunk2, probe1 = program.next_steps()
    program.on_result(StepResult(probe1.key, samples=[Sample("7}", 1, "stop")]))
    program.on_result(StepResult(probe0.key, samples=[Sample("6}", 1, "stop")]))
    assert program.extra_state()["probes"] == ["6", "7"]
    assert program.best_answer() == "7" and not program.done


def test_a_truncated_sample_without_a_stated_answer_is_no_answer():
    from scheduler_backend.programs.base import sample_answer

    assert sample_answer("16 - 3 = 13, then 13 - 4 = 9, so", "length", "auto") is None
    assert sample_answer("so the answer is \\boxed{18} and", "length", "auto") == "18"
    assert sample_answer("16 - 3 = 13, then 13 - 4 = 9", "stop", "auto") == "9"
    assert sample_answer("16 - 3 = 13, then 13 - 4 = 9", "length", "number") == "9"


# --- deadlines: a lowered budget, and probing unfinished samples ----------------------------------

def test_a_lowered_budget_keeps_what_is_in_flight_and_stops_a_program_with_nothing_left():
    program = _sc(budget=16)
    assert program.first_units() == 4
    program.next_steps()  # 4 samples out
    assert program.limit_budget(2) == 4 and not program.done, "never below the samples in flight"
    program.on_result(StepResult("round1", samples=[Sample(f"\\boxed{{{i}}}", 3, "stop") for i in range(4)]))
    assert program.stop_reason is StopReason.CAP, "its lowered cap is spent"
    other = _sc(budget=16)
    other.on_result(StepResult("round1", samples=[Sample(f"\\boxed{{{i}}}", 3, "stop") for i in range(4)]))
    assert other.limit_budget(3) == 4 and other.stop_reason is StopReason.CAP, "nothing to issue or await: it stops"


def test_other_programs_count_their_steps_in_flight_against_a_lowered_budget():
    rebase = Rebase(QUESTION, 10, ThresholdPolicy(), sampling=SAMPLING, width=4, children=2)
    assert rebase.first_units() == 4
    rebase.next_steps()
    assert rebase.limit_budget(1) == 4 and not rebase.done
    mcts = Mcts(QUESTION, 6, ThresholdPolicy(), sampling=SAMPLING, children=2, max_depth=5)
    mcts.next_steps()
    assert mcts.limit_budget(0) == 1 and not mcts.done, "the iteration under way"
    cot = CotProbe(QUESTION, 8, ThresholdPolicy(), sampling=SAMPLING)
    cot.next_steps()
    assert cot.limit_budget(0) == 1 and not cot.done and cot.probe_steps(["partial"]) == []


def test_self_consistency_probed_answers_vote_and_are_counted():
    program = _sc(budget=16)
    program.next_steps()
    steps = program.probe_steps(["First, 2 + 3", "So 2 + 3 = 5"])
    assert [s.key for s in steps] == ["probe0", "probe1"]
    assert all(s.sampling.temperature == 0.0 and s.sampling.n == 1 for s in steps)
    assert steps[1].messages[-1].content.startswith("So 2 + 3 = 5") and steps[1].messages[-1].content.endswith("\\boxed{")
    for step, text in zip(steps, ["5} \\]", "5}"]):
        program.on_result(StepResult(step.key, samples=[Sample(text, 2, "stop")]))
    state = program.state()
    assert state.answer == "5" and state.extra["probed"] == 2 and state.steps == 2 and not state.done
