"""The discrete-event simulator: virtual time, the engine model's timing and ordering, trace
replay, and the real runner and scheduler driven at scale."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engines.round_robin import RoundRobinEngine
from engines.scripted import ScriptedEngine
from engines.simulated import EngineModel, SimulatedEngine, TraceSamples, prefix_tokens, prompt_tokens, sample_text
from loadtest.fleet_agreement import split_samples
from loadtest.simulator import SYSTEMS, SimConfig, least_connections, main, simulate, sustainable_rate, sweep, tightest_slo_scale
from loadtest.slo import ProgramRecord
from loadtest.slo_report import AGREEMENT_POINTS, engine_model, equal_accuracy_bound, load_real
from loadtest.slo_report import TRACES as WORKLOAD_TRACES
from loadtest.virtual_loop import run_virtual
from scheduler_backend.allocation import ThresholdPolicy
from scheduler_backend.engine import GenerateCall, SamplingSpec
from scheduler_backend.programs.base import sample_answer
from scheduler_backend.prompts import solve_messages
from scheduler_backend.quality import QualityFloor
from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler
from scheduler_backend.traces import load_traces
from tests.unit.synthetic_traces import sc_trace

TRACES = Path(__file__).resolve().parents[2] / "data" / "traces"
GSM8K = load_traces(TRACES / "gsm8k-test-sc16.jsonl")
GPU = EngineModel.load("gpu")


def toy_traces(*lengths: int) -> list[dict]:
    """One trace per length: question 'q<length>', every sample that long, answer '7'."""
    return [sc_trace(str(n), ["7"] * 4, [n] * 4, gold="7") | {"question": f"q{n}"} for n in lengths]


def call(rid: str, question: str, n: int = 1, priority: int = 0) -> GenerateCall:
    return GenerateCall(request_id=rid, sampling=SamplingSpec(max_tokens=640, n=n), prompt=question, priority=priority)


async def finish_times(engine: SimulatedEngine, c: GenerateCall, at: float = 0.0) -> list[float]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(at)
    out = []
    async for deltas in engine.generate(c):
        out += [loop.time()] * sum(d.finished for d in deltas)
    return out


def test_virtual_loop_sleeps_an_hour_in_milliseconds():
    async def hour() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 5)
        return loop.time()

    t0 = time.perf_counter()
    assert run_virtual(hour()) == pytest.approx(3605.0)
    assert time.perf_counter() - t0 < 0.5


def test_completion_times_follow_the_batch_size():
    """Iteration = 0.1 + 0.01 x batch: two 10-token samples end together at 10 x 0.12 s; a 10- and a
    20-token sample end at 1.2 s and 1.2 + 10 x 0.11 s."""
    model = EngineModel(fixed_s=0.1, per_seq_s=0.01)

    async def go(question: str) -> list[float]:
        engine = SimulatedEngine(model, TraceSamples(toy_traces(10) + [sc_trace("m", ["1", "2"], [10, 20]) | {"question": "mixed"}]))
        return sorted(await finish_times(engine, call("p:1", question, n=2)))

    assert run_virtual(go("q10")) == pytest.approx([1.2, 1.2])
    assert run_virtual(go("mixed")) == pytest.approx([1.2, 2.3])


def test_running_samples_stream_their_tokens_before_they_finish():
    """10 ms a token: a 400-token sample reports about 50 tokens every 0.5 s, then the rest with
    its text, so a rate can be measured long before anything finishes."""
    engine = SimulatedEngine(EngineModel(fixed_s=0.01, per_seq_s=0.0), TraceSamples(toy_traces(400)))

    async def go() -> list[tuple[float, int, bool]]:
        loop = asyncio.get_running_loop()
        return [(loop.time(), d.num_tokens, d.finished) async for deltas in engine.generate(call("p:1", "q400")) for d in deltas]

    events = run_virtual(go())
    streamed = [(t, n) for t, n, finished in events if n and not finished]
    assert len(streamed) == 7 and all(n == pytest.approx(50, abs=1) for _, n in streamed)
    assert sum(n for _, n, _ in events) == 400 and events[-1][2] and events[-1][0] == pytest.approx(4.0)


def test_prefill_is_paid_once_per_request_with_prefix_caching():
    """A 100-token prompt at 0.01 s/token stalls decoding 1 s once with caching, once per sample
    (2 s) without; then 10 iterations of 0.1 s."""
    question = "q" * 396
    traces = [sc_trace("x", ["7", "7"], [10, 10]) | {"question": question}]
    c = call("p:1", question, n=2)
    assert prompt_tokens(c) == 100

    async def go(caching: bool) -> list[float]:
        model = EngineModel(fixed_s=0.1, per_seq_s=0.0, prefill_s_per_token=0.01, prefix_caching=caching)
        return await finish_times(SimulatedEngine(model, TraceSamples(traces)), c)

    assert run_virtual(go(True)) == pytest.approx([2.0, 2.0])
    assert run_virtual(go(False)) == pytest.approx([3.0, 3.0])


def test_the_prefix_cache_charges_a_programs_repeated_prompt_only_once():
    """100 prompt tokens at 0.01 s/token, then 10 iterations of 0.1 s: a program's first request
    pays the 1 s prefill, its second only decodes, another program with the same question pays
    again (the cache is per program), and so does the first once forgotten; without prefix
    caching every request pays."""
    question = "q" * 396
    traces = [sc_trace("x", ["7"] * 4, [10] * 4) | {"question": question}]

    async def go(caching: bool) -> list[float]:
        model = EngineModel(fixed_s=0.1, per_seq_s=0.0, prefill_s_per_token=0.01, prefix_caching=caching)
        engine = SimulatedEngine(model, TraceSamples(traces))
        loop = asyncio.get_running_loop()
        took = []
        for rid in ("p:1", "p:2", "q:1", "forget p", "p:3"):
            if rid == "forget p":
                engine.forget("p")
                continue
            t0 = loop.time()
            await finish_times(engine, call(rid, question))
            took.append(loop.time() - t0)
        return took

    assert run_virtual(go(True)) == pytest.approx([2.0, 1.0, 2.0, 2.0])
    assert run_virtual(go(False)) == pytest.approx([2.0, 2.0, 2.0, 2.0])


def test_a_probe_shares_the_prefix_up_to_its_question_and_pays_for_its_continued_text():
    solve = solve_messages("q" * 396)
    first = GenerateCall(request_id="p:round1", sampling=SamplingSpec(max_tokens=64, n=4), messages=solve)
    probe = GenerateCall(request_id="p:probe", sampling=SamplingSpec(max_tokens=4), messages=solve_messages("q" * 396, partial="a" * 396))
    assert prefix_tokens(probe) == prefix_tokens(first) == prompt_tokens(first)
    assert prompt_tokens(probe) - prefix_tokens(probe) == 396 // 4 + 4


def test_round_robin_per_request_spreads_a_programs_calls_and_aborts_reach_their_engine():
    """Two engines: a program's first call goes to one, its second to the other (so each pays
    the prefill its own prefix cache would have saved); aborting the second frees only the engine
    that holds it, and the first still finishes."""
    model = EngineModel(fixed_s=0.1, per_seq_s=0.0, prefill_s_per_token=0.01)
    question = "q" * 396
    samples = TraceSamples([sc_trace("x", ["7"] * 4, [10] * 4) | {"question": question}])
    engines = [SimulatedEngine(model, samples) for _ in range(2)]
    front = RoundRobinEngine(engines)

    async def go() -> tuple[list[float], list[float]]:
        first = asyncio.ensure_future(finish_times(front, call("p:round1", question)))
        second = asyncio.ensure_future(finish_times(front, call("p:round2", question)))
        await asyncio.sleep(0.5)
        assert [e.requests for e in engines] == [1, 1]
        assert [e.prefill_s for e in engines] == pytest.approx([1.0, 1.0])
        await front.abort("p:round2")
        assert [e.requests for e in engines] == [1, 0]
        return await first, await second

    first, second = run_virtual(go())
    assert first == pytest.approx([2.0]) and second == []


def test_per_request_balancing_pays_the_prefill_the_program_balancer_saves():
    """Two rounds a program (no early stop) over two replicas, one program at a time: kept on one
    replica a program's second round finds its prefix cached; spread request by request it pays
    it again."""
    traces = toy_traces(50)
    config = SimConfig(budget=8, round_size=4, replicas=2, base_deadline_s=60)
    model = EngineModel(fixed_s=0.02, per_seq_s=0.0, prefill_s_per_token=0.01)
    per_program = simulate("gang", traces, rate=0.02, slo_scale=1, programs=20, model=model, config=config)
    per_request = simulate("gang", traces, rate=0.02, slo_scale=1, programs=20, model=model,
                           config=replace(config, balancer="per-request"))
    one_prompt = model.prefill_s(prompt_tokens(GenerateCall("p:1", SamplingSpec(max_tokens=64), solve_messages("q50"))), 1)
    assert per_program.row()["prefill_s_per_program"] == pytest.approx(one_prompt)
    assert per_request.row()["prefill_s_per_program"] == pytest.approx(2 * one_prompt)
    assert all(r.tokens == 8 * 50 for r in per_program.records + per_request.records)


def test_k_replicas_behind_the_program_balancer_sustain_k_times_one_replicas_rate():
    """A small engine (16 slots, ~440 tok/s full), programs of 4 samples of 100 or 150 tokens in two
    rounds, held to a floor of all 4 (so an overloaded replica misses rather than answering with
    fewer): 4 replicas sustain at least 0.9 x 4 times one replica's rate, and no more than pooling
    4 replicas' Poisson arrivals explains (1.35 x 4 at most); a balancer that sent every program
    to one replica would sustain about one replica's."""
    model = EngineModel(fixed_s=0.02, per_seq_s=0.001, max_num_seqs=16, prefill_s_per_token=1e-4)
    config = SimConfig(budget=4, round_size=2, base_deadline_s=10, floor=QualityFloor(4, "refuse"))
    per_replica = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    rates: dict[int, float | None] = {}
    for k in (1, 4):
        rows = sweep(["gang"], toy_traces(100, 150), rates=[r * k for r in per_replica], slo_scales=[1], programs=300 * k,
                     model=model, config=replace(config, replicas=k))
        rates[k] = sustainable_rate([{**r, "attainment": r["attainment_at_floor"]} for r in rows], "gang", 1)
    one, four = rates[1], rates[4]
    assert one is not None and four is not None and per_replica[0] < one < per_replica[-1], rates
    assert 0.9 <= four / (4 * one) <= 1.35, rates


def test_a_real_programs_final_report_rebuilds_into_its_samples():
    """loadtest/fleet_agreement.py: an unanswered sample counts at the token cap when the tokens
    allow it, the answered ones share the rest; otherwise every sample gets the mean."""
    def record(tokens: int, clusters: list[tuple[str, int]], unanswered: int) -> ProgramRecord:
        server = {"clusters": [{"answer": a, "size": n} for a, n in clusters], "no_answer": unanswered}
        return ProgramRecord("u", 10.0, 60.0, None, False, tokens, server=server)

    mixed = split_samples(record(712, [("8", 2), ("9", 1)], 1), 256)
    assert [(x["answer"], x["tokens"], x["finish_reason"]) for x in mixed] == [
        ("8", 152, "stop"), ("8", 152, "stop"), ("9", 152, "stop"), (None, 256, "length")]
    short = split_samples(record(300, [("8", 1)], 2), 256)
    assert [x["tokens"] for x in short] == [100, 100, 100] and short[1]["answer"] is None
    assert split_samples(record(0, [], 0), 256) == []


def test_abort_frees_the_slot_at_once():
    model = EngineModel(fixed_s=0.1, per_seq_s=0.0, max_num_seqs=1)

    async def go() -> tuple[list[float], list[float]]:
        engine = SimulatedEngine(model, TraceSamples(toy_traces(100, 10)))
        long = asyncio.ensure_future(finish_times(engine, call("a:1", "q100")))
        short = asyncio.ensure_future(finish_times(engine, call("b:1", "q10")))
        await asyncio.sleep(1.0)
        assert engine.batch == 1 and engine.requests == 2
        await engine.abort("a:1")
        return await long, await short

    long, short = run_virtual(go())
    assert long == [] and short == pytest.approx([2.0])


def test_waiting_sequences_run_by_priority_then_arrival():
    model = EngineModel(fixed_s=0.1, per_seq_s=0.0, max_num_seqs=1)

    async def go() -> dict[str, float]:
        engine = SimulatedEngine(model, TraceSamples(toy_traces(10)))
        order = [("first", 9), ("low", 5), ("high", 1), ("high-later", 1)]
        tasks = {name: asyncio.ensure_future(finish_times(engine, call(f"{name}:1", "q10", priority=prio))) for name, prio in order}
        return {name: (await t)[0] for name, t in tasks.items()}

    done = run_virtual(go())
    assert done == pytest.approx({"first": 1.0, "high": 2.0, "high-later": 3.0, "low": 4.0})


def test_fit_recovers_known_parameters():
    truth = EngineModel(fixed_s=0.02, per_seq_s=0.0012)
    fitted = EngineModel.fit([(b, truth.tokens_per_s(b)) for b in (1, 8, 32, 64)], max_num_seqs=64)
    assert fitted.fixed_s == pytest.approx(0.02) and fitted.per_seq_s == pytest.approx(0.0012)
    assert fitted.max_num_seqs == 64
    with pytest.raises(ValueError):
        EngineModel.fit([(8, 100.0)])


def test_alone_time_matches_the_engine():
    model = EngineModel(fixed_s=0.1, per_seq_s=0.01, max_num_seqs=2, prefill_s_per_token=0.001)
    # 0.1 s prefill; 10 and 20 decode; at progress 10 the third joins and ends with the 20 at progress 20.
    assert model.alone_s(100, [10, 20, 10]) == pytest.approx(0.1 + 10 * 0.12 + 10 * 0.12)
    question = "q" * 396
    trace = sc_trace("x", ["1", "2", "3"], [10, 20, 10]) | {"question": question}

    async def go() -> tuple[float, float]:
        engine = SimulatedEngine(model, TraceSamples([trace]))
        done = await finish_times(engine, call("p:1", question, n=3))
        return max(done), engine.alone_s["p"]

    last, alone = run_virtual(go())
    assert last == pytest.approx(alone)


@pytest.mark.parametrize("name", ["gsm8k-test-sc16", "arithmetic-test-sc16"])
def test_every_recorded_answer_round_trips_through_sample_answer(name):
    samples = [s for t in load_traces(TRACES / f"{name}.jsonl") for s in t["samples"]]
    assert samples
    for s in samples:
        assert sample_answer(sample_text(s["answer"], s["finish_reason"]), s["finish_reason"], "auto") == s["answer"], s


def test_a_program_draws_recorded_samples_without_replacement_and_cycles():
    trace = sc_trace("x", ["1", "2", "3"], [5, 6, 7]) | {"question": "Q"}
    deck = TraceSamples([trace], seed=3)
    first = deck.draw(call("p:1", "Q", n=3))
    assert sorted(d.tokens for d in first) == [5, 6, 7]
    assert len(deck.draw(call("p:2", "Q", n=4))) == 4
    assert [d.tokens for d in TraceSamples([trace], seed=3).draw(call("p:1", "Q", n=3))] == [d.tokens for d in first]


def test_runner_gang_switch_sends_every_request_at_priority_zero():
    for gang in (True, False):
        engine = ScriptedEngine(lambda c, i: f"\\boxed{{{i}}}")
        runner = ProgramRunner(engine, Scheduler(), gang=gang, inline_results=True)
        prog = create("self-consistency", "What is 3 + 5?", {"budget": 4, "round_size": 2})
        asyncio.run(runner.run("p", prog))
        assert engine.calls and all((c.priority == 0) is (not gang) for c in engine.calls), gang


def test_simulated_dynasor_stops_settled_programs_early():
    traces = toy_traces(100)
    result = simulate("dynasor", traces, rate=0.1, slo_scale=1, programs=20, model=GPU, policy=ThresholdPolicy(settle=0.9, detect_step=2))
    assert all(r.answer == "7" and r.correct and r.attained for r in result.records)
    assert all(r.tokens == 200 for r in result.records), "one round of the detect step, then settled"
    baseline = simulate("baseline", traces, rate=0.1, slo_scale=1, programs=20, model=GPU)
    assert all(r.tokens == 16 * 100 for r in baseline.records)
    assert all(o.ftf == pytest.approx(1.0, rel=0.05) for o in result.outcomes), "nearly alone on the engine"


def test_dynasor_attains_more_slos_than_the_baseline_under_overload():
    runs = {s: simulate(s, GSM8K, rate=6, slo_scale=1, programs=400, model=GPU) for s in ("baseline", "dynasor")}
    assert runs["dynasor"].summary.attainment > runs["baseline"].summary.attainment + 0.3
    assert runs["dynasor"].summary.accuracy > runs["baseline"].summary.accuracy


def test_replicas_share_the_load():
    one = simulate("dynasor", GSM8K, rate=8, slo_scale=1, programs=300, model=GPU)
    two = simulate("dynasor", GSM8K, rate=8, slo_scale=1, programs=300, model=GPU, config=SimConfig(replicas=2))
    # One replica keeps its SLOs by shrinking budgets to the deadlines; two have room for more samples.
    assert two.summary.mean_tokens > 1.2 * one.summary.mean_tokens
    assert two.summary.p50_latency_s < one.summary.p50_latency_s


def test_sustainable_rate_and_tightest_slo_interpolate_the_90_percent_crossing():
    rows = [{"system": "s", "rate": r, "slo_scale": 1.0, "attainment": a} for r, a in ((1, 1.0), (2, 0.95), (4, 0.85))]
    assert sustainable_rate(rows, "s", 1.0) == pytest.approx(3.0)
    rows = [{"system": "s", "rate": 2, "slo_scale": s, "attainment": a} for s, a in ((0.5, 0.5), (1.0, 0.8), (2.0, 1.0))]
    assert tightest_slo_scale(rows, "s", 2) == pytest.approx(1.5)
    assert sustainable_rate([{"system": "s", "rate": 1, "slo_scale": 1.0, "attainment": 0.5}], "s", 1.0) is None


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert main(["--programs", "30", "--rates", "2", "--systems", "dynasor,baseline", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dynasor" in printed and "baseline" in printed and "sustainable rate" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["system"] for r in rows] == ["dynasor", "baseline"] and rows[0]["programs"] == 30


def test_ten_thousand_programs_simulate_within_five_minutes():
    t0 = time.perf_counter()
    result = simulate(SYSTEMS["dynasor"], GSM8K, rate=4, slo_scale=1, programs=10_000, model=GPU)
    wall = time.perf_counter() - t0
    print(f"\n10,000 dynasor programs: {wall:.1f} s wall for {result.duration_s:.0f} s simulated, "
          f"SLO attainment {result.summary.attainment:.1%}")
    assert len(result.records) == 10_000
    assert wall < 300


def test_a_deadline_before_any_sample_finished_is_answered_by_probing_samples_far_enough_along():
    # Samples of 300 and 600 tokens on the GPU model (about 10.2 ms a step at this batch): probed
    # 1 s before a 3 s deadline, the 300-token samples are past half-way (their probes give the
    # recorded answer), the 600-token ones are not (a wrong guess); nothing has finished.
    traces = toy_traces(300, 600)
    policy = ThresholdPolicy(settle=0.9, detect_step=4)

    def run(trace: dict, probe_s: float):
        config = SimConfig(budget=4, round_size=4, base_deadline_s=3.0, probe_s=probe_s)
        return simulate("dynasor", [trace], rate=0.01, slo_scale=1, programs=3, model=GPU, config=config, policy=policy)

    assert all(r.answer == "7" and r.attained for r in run(traces[0], 1.0).records), "probed answers vote"
    early = run(traces[1], 1.0).records
    assert all(r.answer and r.answer != "7" and not r.correct for r in early), "a probe of a sample not half done guesses wrong"
    assert all(r.answer is None for r in run(traces[0], 0.0).records), "no probing, no answer"


def test_the_simulator_reproduces_the_committed_real_sweep_within_15_points():
    """Every point of the real server's sweep (docs/results/slo_real.json, `make bench-slo`) run
    again in the simulator on the engine fitted to that run: SLO attainment agrees within 15
    points, except where the real `dynasor` left more than 5% of its programs with no answer at
    their deadline (overload: samples that had not produced a token by then, so nothing to probe).
    The simulator starts a sequence as soon as a batch slot frees and never preempts it, so there
    it can only be optimistic, and that is checked too."""
    real = load_real(Path(__file__).resolve().parents[2] / "docs" / "results" / "slo_real.json")
    s = real["settings"]
    config = SimConfig(budget=s["budget"], max_tokens=s["max_tokens"], base_deadline_s=s["base_deadline_s"])
    model = engine_model(real)
    traces = GSM8K[: s["questions"]]
    on_time, misses, late_server = 0, [], []
    for p in real["points"]:
        programs = max(round(p["rate"] * s["duration_s"]), 3)
        sim = sweep([p["system"]], traces, rates=[p["rate"]], slo_scales=[p["slo_scale"]], programs=programs, model=model,
                    config=config, seeds=5)[0]  # as slo_report: a loaded point varies by 10-17 points between seeds
        where = (p["system"], p["rate"], p["slo_scale"], p["attainment"], round(sim["attainment"], 3))
        starved = p["system"] == "dynasor" and p["deadline_met"] - p["attainment"] > 0.05  # in time, no answer
        if not starved:
            on_time += 1
            if abs(sim["attainment"] - p["attainment"]) > AGREEMENT_POINTS:
                misses.append(where)
        elif sim["attainment"] < p["attainment"] - AGREEMENT_POINTS:
            late_server.append(where)
    assert on_time >= 12 and not misses, (on_time, misses)
    assert not late_server, late_server


def test_a_simulation_replays_exactly():
    """Same inputs, same records: ties in the engine break by admission order and probe results
    are taken in step order, never by memory address or set order."""
    config = SimConfig(budget=8, base_deadline_s=20)

    def once() -> list[tuple]:
        records = simulate("dynasor", GSM8K, rate=0.9, slo_scale=2, programs=80, model=EngineModel.load("cpu"), config=config).records
        return [(r.answer, r.latency_s, r.tokens, r.stop_reason, r.probed) for r in records]

    assert once() == once() == once()


def test_the_equal_accuracy_bound_is_what_replay_saves_at_the_baselines_accuracy() -> None:
    """Every sample agrees: 8 samples are right, and so are the first 4, where a policy consulted
    from its detection step (4) stops; the oracle stops after 1. So allocation can halve the
    tokens at equal accuracy (a 2x rate at most), and only knowing the answer gets 8x."""
    traces = [sc_trace(f"u{i}", ["42"] * 16, [10] * 16) for i in range(24)]
    lines, best = equal_accuracy_bound(traces, 8)
    assert best == pytest.approx(2.0)
    assert "| threshold | 40 | 2.00 |" in lines and "| oracle | 10 | 8.00 |" in lines
    assert "accuracy of 8 samples (100.0%, 80 tokens)" in lines[0]


def test_code_traces_simulate_with_answers_graded_as_their_samples_were():
    """A code trace has no gold: its samples' behaviours vote, and the answer is right as the
    recorded sample with that behaviour passed its hidden tests."""
    passing, failing = "behaviour:aaaa", "behaviour:bbbb"
    right = sc_trace("c1", [passing] * 4, [100] * 4, gold=None) | {"question": "q-right", "program": "code"}
    wrong = sc_trace("c2", [failing] * 4, [100] * 4, gold=None) | {"question": "q-wrong", "program": "code"}
    for trace, verdict in ((right, True), (wrong, False)):
        for sample in trace["samples"]:
            sample["correct"] = verdict
    policy = ThresholdPolicy(settle=0.9, detect_step=2)
    result = simulate("dynasor", [right, wrong], rate=0.1, slo_scale=1, programs=20, model=GPU, policy=policy)
    by_answer = {r.answer: r.correct for r in result.records}
    assert by_answer == {passing: True, failing: False}


def test_a_refusing_floor_in_the_simulator_serves_no_guess_below_it():
    """Under overload, a floor of 8 samples with `refuse`: every answer served rests on 8 finished
    samples; the rest are refused (errors, as UNAVAILABLE is to a client), none is a guess."""
    floor = QualityFloor(units=8, action="refuse")
    result = simulate("dynasor", GSM8K, rate=6, slo_scale=0.5, programs=150, model=GPU, config=SimConfig(floor=floor))
    answered = [r for r in result.records if r.answer is not None]
    refused = [r for r in result.records if r.error.startswith("floor:")]
    assert answered and refused, (len(answered), len(refused))
    assert all(r.floor_met for r in answered)
    degraded = simulate("dynasor", GSM8K, rate=6, slo_scale=0.5, programs=150, model=GPU,
                        config=SimConfig(floor=QualityFloor(units=8, action="degrade")))
    assert any(r.answer is not None and not r.floor_met for r in degraded.records), "degrade serves guesses below it"


@pytest.mark.parametrize("workload", ["code", "math"])
def test_the_simulator_reproduces_the_real_sweeps_at_the_quality_floor(workload):
    """The real points of `make bench-slo-floor` (docs/results/slo_floor_*_real.json, about 100
    programs each, a quality floor of 2 samples, refusing) simulated again on the engine fitted to
    that run: `dynasor`'s SLO attainment at the floor agrees within 15 points everywhere, the
    baseline's on math. On code the simulated baseline is optimistic (up to 33 points): the
    simulator models the engine alone, and on these 2 cores the baseline client's behaviour votes
    (8 sandbox runs a program) and the hidden tests share the CPU with the engine; that is checked
    as what it is: never pessimistic by more than 15 points."""
    real = load_real(Path(__file__).resolve().parents[2] / "docs" / "results" / f"slo_floor_{workload}_real.json")
    s = real["settings"]
    assert s["floor"] >= 1 and s["programs"] >= 100 and len(real["points"]) >= 2
    config = SimConfig(budget=s["budget"], max_tokens=s["max_tokens"], base_deadline_s=s["base_deadline_s"],
                       floor=QualityFloor(s["floor"], s["floor_action"]))
    traces = load_traces(TRACES / WORKLOAD_TRACES[workload])[: s["questions"]]
    misses = []
    for p in real["points"]:
        sim = sweep([p["system"]], traces, rates=[p["rate"]], slo_scales=[p["slo_scale"]], programs=p["programs"],
                    model=engine_model(real), config=config, seeds=5)[0]
        diff = sim["attainment_at_floor"] - p["attainment_at_floor"]
        optimistic_only = workload == "code" and p["system"] == "baseline"
        if diff < -AGREEMENT_POINTS or (diff > AGREEMENT_POINTS and not optimistic_only):
            misses.append((p["system"], p["rate"], p["attainment_at_floor"], round(sim["attainment_at_floor"], 3)))
    assert not misses, misses


def test_the_agent_weighted_balancer_is_haproxys_weighted_leastconn():
    """Fewest streams for the weight: a replica 30 s behind (weight 50) gets a new program only when
    it serves fewer than about half the other's streams; equal weights are plain least-connections."""
    assert least_connections([2, 1], None, 0) == 1
    assert least_connections([2, 1], [100, 50], 0) == 0, "(2+1)/100 < (1+1)/50: the idle-weighted replica takes it"
    assert least_connections([4, 1], [100, 50], 0) == 1
    assert least_connections([1, 1], [100, 100], 0) == 0 and least_connections([1, 1], [100, 100], 1) == 1


def test_the_agent_weighted_balancer_places_programs_by_backlog_and_still_shares_the_load():
    runs = {b: simulate("dynasor", GSM8K, rate=8, slo_scale=1, programs=200, model=GPU, config=SimConfig(replicas=2, balancer=b))
            for b in ("least-loaded", "agent-weighted")}
    placed = {b: {o.pid: o.replica for o in r.outcomes} for b, r in runs.items()}
    assert placed["least-loaded"] != placed["agent-weighted"], "the weights never changed a pick"
    for b, r in runs.items():
        shares = [sum(o.replica == k for o in r.outcomes) / len(r.outcomes) for k in (0, 1)]
        assert len(r.outcomes) == 200 and min(shares) >= 0.35, (b, shares)
