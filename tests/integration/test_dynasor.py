"""The real `dynasor` model in the real tritonserver: programs over BLS to the real policy and
reward models on the small model. SmolLM2 reasons poorly; these tests check the serving behaviour
(budgets, thresholds, cancellation, deadlines, errors, metrics), not accuracy."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from client.dynasor_client import AsyncDynasorClient, DynasorClient, ProgramError
from engines.grpc_stream import StreamCall, StreamError
from tests.integration.helpers import metric_values, wait_for

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
SMALL = {"max_tokens": 48, "temperature": 1.0}


def sc(server, **options):
    return DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency", {**SMALL, **options})


def test_self_consistency_returns_a_final_answer_within_its_budget(server):
    progress = []
    result = DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency", {**SMALL, "budget": 6, "round_size": 2},
                                                  on_progress=progress.append)
    assert result.final and result.stop_reason in ("settled", "cap", "hopeless")
    assert 0.0 <= result.certaindex <= 1.0
    assert 1 <= result.steps <= 6 and result.budget == 6
    assert result.tokens_used > 0 and result.latency_s > 0
    assert progress and not any(p.final for p in progress[:-1]), "progress responses come before the final one"
    assert [p.steps for p in progress] == sorted(p.steps for p in progress), "samples used only grow"


def test_a_strict_threshold_uses_fewer_samples_than_threshold_one(server):
    common = {"budget": 8, "round_size": 2, "detect_step": 2, "temperature": 1.2}
    strict = sc(server, settle_threshold=0.0, **common)
    never = sc(server, settle_threshold=1.0, **common)
    assert strict.stop_reason == "settled" and strict.steps == 2
    assert never.steps > strict.steps, (strict, never)


@pytest.mark.parametrize("program, options", [
    ("rebase", {"budget": 4, "width": 2, "max_depth": 2, "max_tokens": 32}),
    ("mcts", {"budget": 2, "children": 2, "max_tokens": 32, "rollout_tokens": 48}),
    ("cot-probe", {"budget": 3, "chunk_tokens": 24, "window": 2}),
])
def test_every_program_type_completes(server, program, options):
    result = DynasorClient(server.grpc_url).solve(QUESTION, program, options)
    assert result.final and result.stop_reason in ("settled", "cap", "hopeless", "finished")
    assert result.steps <= options["budget"]
    assert result.tokens_used > 0


def test_http_generate_stream_and_asyncio_clients(server):
    http = DynasorClient(server.http_url, protocol="http").solve(QUESTION, "self-consistency", {**SMALL, "budget": 2, "round_size": 2})
    assert http.final and http.steps == 2

    async def both():
        grpc = AsyncDynasorClient(server.grpc_url).solve(QUESTION, "self-consistency", {**SMALL, "budget": 2, "round_size": 2})
        aio_http = AsyncDynasorClient(server.http_url, protocol="http").solve(QUESTION, "self-consistency", {**SMALL, "budget": 2, "round_size": 2})
        return await asyncio.gather(grpc, aio_http)

    for r in asyncio.run(both()):
        assert r.final and r.steps == 2


def test_cancelling_a_program_frees_the_policy_engine_within_2s(server):
    call = StreamCall(server.grpc_url, "dynasor", {"text_input": QUESTION, "program": "self-consistency",
                                                   "options": json.dumps({"budget": 32, "round_size": 8, "max_tokens": 1500, "settle_threshold": 1.0})})
    busy = wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) >= 1, timeout_s=30)
    assert busy, "the program never reached the engine"
    call.close()
    t0 = time.monotonic()
    freed = wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) == 0, timeout_s=3)
    assert freed and time.monotonic() - t0 <= 2.6, "policy still runs the cancelled program's requests"


def test_a_deadline_returns_the_best_answer_so_far_in_time(server):
    t0 = time.monotonic()
    result = sc(server, budget=32, round_size=4, max_tokens=1500, settle_threshold=1.0, deadline_s=4)
    elapsed = time.monotonic() - t0
    assert result.stop_reason == "deadline"
    assert elapsed <= 4 + 1.0, f"returned {elapsed:.1f} s after the start of a 4 s deadline"
    assert wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) == 0, timeout_s=2)


def test_a_deadline_before_any_sample_finished_still_answers_by_probing(server):
    """Four samples that cannot finish in 3 s (min_tokens keeps them going): `deadline_probe_s`
    before the deadline their partial texts are continued, told to state the answer, and voted."""
    met_before = sum(v for k, v in metric_values(server, "dynasor_program_deadline_total").items() if 'outcome="met"' in k)
    t0 = time.monotonic()
    result = sc(server, budget=4, round_size=4, max_tokens=1500, min_tokens=1400, settle_threshold=1.0, deadline_s=3)
    elapsed = time.monotonic() - t0
    assert result.stop_reason == "deadline"
    assert elapsed <= 3 + 1.0, f"returned {elapsed:.1f} s after the start of a 3 s deadline"
    assert result.details.get("probed", 0) >= 1, result.details
    assert result.answer, f"probing gave no answer: {result.details}"
    met = sum(v for k, v in metric_values(server, "dynasor_program_deadline_total").items() if 'outcome="met"' in k)
    assert met == met_before + 1, "an answer at the deadline is a deadline met"
    assert wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) == 0, timeout_s=2)


MALFORMED = [
    ({"program": "self-consistency"}, "text_input"),
    ({"text_input": "   "}, "text_input"),
    ({"text_input": QUESTION, "program": "no-such-program"}, "program"),
    ({"text_input": QUESTION, "options": json.dumps({"budget": -1})}, "options.budget"),
    ({"text_input": QUESTION, "options": json.dumps({"budget": 0})}, "options.budget"),
    ({"text_input": QUESTION, "options": json.dumps({"budget": "ten"})}, "options.budget"),
    ({"text_input": QUESTION, "options": json.dumps({"budget": True})}, "options.budget"),
    ({"text_input": QUESTION, "options": json.dumps({"budget": 10**9})}, "options.budget"),
    ({"text_input": QUESTION, "options": json.dumps({"max_tokens": 10**7})}, "options.max_tokens"),
    ({"text_input": QUESTION, "options": json.dumps({"temperature": "hot"})}, "options.temperature"),
    ({"text_input": QUESTION, "options": json.dumps({"temperature": -1})}, "options.temperature"),
    ({"text_input": QUESTION, "options": json.dumps({"settle_threshold": 1.5})}, "options.settle_threshold"),
    ({"text_input": QUESTION, "options": json.dumps({"deadline_s": -3})}, "options.deadline_s"),
    ({"text_input": QUESTION, "options": json.dumps({"deadline_s": "soon"})}, "options.deadline_s"),
    ({"text_input": QUESTION, "options": json.dumps({"no_such_option": 1})}, "options.no_such_option"),
    ({"text_input": QUESTION, "options": json.dumps({"answer_format": "roman"})}, "options.answer_format"),
    ({"text_input": QUESTION, "options": json.dumps({"calibration": "../../etc/passwd"})}, "options.calibration"),
    ({"text_input": QUESTION, "options": "{not json"}, "options"),
    ({"text_input": QUESTION, "options": "[1, 2]"}, "options"),
    ({"text_input": "x" * 20000}, "text_input"),
]


def test_twenty_malformed_requests_get_clear_errors_while_a_good_program_completes(server):
    assert len(MALFORMED) == 20
    good: dict = {}

    def run_good():
        good["result"] = sc(server, budget=4, round_size=2)

    t = threading.Thread(target=run_good)
    t.start()
    for inputs, field in MALFORMED:
        with pytest.raises(StreamError) as err:
            StreamCall(server.grpc_url, "dynasor", inputs, timeout_s=30).collect()
        assert field in str(err.value), (inputs, str(err.value))
    t.join(timeout=300)
    assert good["result"].final and good["result"].steps >= 1


def test_client_errors_name_the_field(server):
    with pytest.raises(ProgramError, match="options.budget"):
        DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency", {"budget": -2})
    with pytest.raises(ProgramError, match="options.budget"):
        DynasorClient(server.http_url, protocol="http").solve(QUESTION, "self-consistency", {"budget": -2})


def test_metrics_move_with_programs(server):
    def total(name, **labels):
        return sum(v for k, v in metric_values(server, name).items() if all(f'{a}="{b}"' in k for a, b in labels.items()))

    before_programs = total("dynasor_programs_total", program="self-consistency")
    before_hist = total("dynasor_program_certaindex_at_stop_count", program="self-consistency")
    before_tokens = total("dynasor_program_tokens_used_total", program="self-consistency")
    before_invalid = total("dynasor_programs_total", stop_reason="invalid")
    before_deadline = total("dynasor_program_deadline_total", outcome="met")
    result = sc(server, budget=2, round_size=2, deadline_s=600)
    with pytest.raises(ProgramError):
        sc(server, budget=-1)
    assert total("dynasor_programs_total", program="self-consistency") == before_programs + 1
    assert total("dynasor_program_certaindex_at_stop_count", program="self-consistency") == before_hist + 1
    assert total("dynasor_program_tokens_used_total", program="self-consistency") == before_tokens + result.tokens_used
    assert total("dynasor_programs_total", stop_reason="invalid") == before_invalid + 1
    assert total("dynasor_program_deadline_total", outcome="met") == before_deadline + 1
    assert total("dynasor_programs_in_flight") == 0


def test_cli_ask_and_solve(server, tmp_path, capsys):
    from client.cli import main

    assert main(["ask", QUESTION, "--url", server.grpc_url, "--budget", "2", "--options", json.dumps({"round_size": 2, "max_tokens": 32})]) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "certaindex:" in out and "steps: 2/2" in out
    progress = [line for line in out.splitlines() if line.startswith("  ... ")]
    assert len(progress) == len(set(progress)), "a progress line repeats"
    assert main(["ask", QUESTION, "--url", server.grpc_url, "--budget", "2", "--quiet", "--options", json.dumps({"round_size": 2, "max_tokens": 32})]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert len(quiet) == 1 and "certaindex" not in quiet[0] and "..." not in quiet[0]

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": QUESTION, "answer": "#### 8"}) + "\n" for _ in range(2)))
    results = tmp_path / "out.jsonl"
    assert main(["solve", str(data), "--url", server.grpc_url, "--budget", "2", "--output", str(results),
                 "--options", json.dumps({"round_size": 2, "max_tokens": 32})]) == 0
    out = capsys.readouterr().out
    assert "programs: 2  errors: 0" in out and "accuracy:" in out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 2 and all(r["gold"] == "8" and isinstance(r["correct"], bool) for r in rows)
    assert main(["ask", QUESTION, "--url", server.grpc_url, "--budget", "-1"]) == 2
    assert "options.budget" in capsys.readouterr().err


CODE_QUESTION = 'def add(a: int, b: int) -> int:\n    """Return a + b.\n    >>> add(2, 3)\n    5\n    """\n'


def test_a_code_program_votes_by_behaviour_in_the_sandbox_and_answers_with_a_program(server):
    """SmolLM2 writes poor code; what must hold is the plumbing: samples ran in the sandbox (each
    finished sample is either in a behaviour cluster or counted as no answer), and an answer is the
    question's program, runnable source that defines the function."""
    progress = []
    result = DynasorClient(server.grpc_url).solve(CODE_QUESTION, "code", {"budget": 4, "round_size": 2,
                                                                         "max_tokens": 96, "temperature": 0.3},
                                                  on_progress=progress.append)
    assert result.final and result.stop_reason in ("settled", "cap", "hopeless") and 2 <= result.steps <= 4
    clusters, no_answer = result.details["clusters"], result.details["no_answer"]
    assert sum(c["size"] for c in clusters) + no_answer == result.steps
    assert all(c["answer"].startswith("behaviour:") for c in clusters)
    if result.answer is not None:
        assert result.answer.startswith(CODE_QUESTION.rstrip()) and "def add" in result.answer
        compile(result.answer, "<answer>", "exec")
    with pytest.raises(ProgramError, match="text_input: a code question"):
        DynasorClient(server.grpc_url).solve("What is 2 + 3?", "code", {"budget": 2})


SLOW = {"budget": 6, "round_size": 6, "max_tokens": 200, "min_tokens": 200, "temperature": 1.0}  # ~1,200 tokens


def test_every_final_response_says_what_its_answer_rests_on(server):
    result = DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency", {**SMALL, "budget": 4, "round_size": 2, "floor": 2})
    quality = result.details["quality"]
    assert quality["floor"] == 2 and quality["units"] == result.steps >= 2 and quality["probed"] == 0
    assert quality["floor_met"] is (result.answer is not None) and quality["stop_reason"] == result.stop_reason


def test_a_degrading_floor_answers_past_it_and_says_the_floor_was_not_met(server):
    result = DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency",
                                                  {**SLOW, "floor": 6, "floor_action": "degrade", "deadline_s": 3})
    assert result.stop_reason == "deadline"
    assert result.details["quality"]["floor"] == 6 and result.details["quality"]["floor_met"] is False


def test_a_refusing_floor_serves_no_guess_and_says_how_long_it_would_need(server):
    def refusals():
        return sum(metric_values(server, "dynasor_refusals_total").values())

    before = refusals()
    started = time.monotonic()
    with pytest.raises(ProgramError, match=r"floor: .*(needs about|cannot be reached|the deadline came)"):
        DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency",
                                             {**SLOW, "floor": 6, "floor_action": "refuse", "deadline_s": 3})
    assert time.monotonic() - started < 3 + 3, "refused by its deadline at the latest"
    wait_for(lambda: refusals() == before + 1, timeout_s=5)
    # The engine's rate is measured now: a program whose deadline cannot fit even one round of its
    # floor's samples is refused at arrival, at once, with the time it would need.
    started = time.monotonic()
    with pytest.raises(ProgramError, match=r"floor: an answer resting on 6 knob units .* needs about"):
        DynasorClient(server.grpc_url).solve(QUESTION, "self-consistency",
                                             {**SLOW, "floor": 6, "floor_action": "refuse", "deadline_s": 0.05})
    assert time.monotonic() - started < 1.0
    assert any('cause="floor_at_arrival"' in k for k in metric_values(server, "dynasor_refusals_total"))
