"""How OpenAI requests map onto programs, and errors back, without a server (the front on the real
server: tests/integration/test_openai.py)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from frontends.openai_api import ApiError, chat_call, completion_call, server_error
from frontends.openai_server import create_app
from serving.launcher import free_port

USER = [{"role": "user", "content": "What is 2+2?"}]


def test_extra_body_is_read_at_the_top_level_where_the_openai_client_puts_it() -> None:
    """The openai client merges extra_body into the JSON's top level: {"dynasor": {...}} arrives
    there, not nested under "extra_body" (the public Dynasor proxy's bug)."""
    call = chat_call({"model": "dynasor/self-consistency", "messages": USER, "dynasor": {"budget": 12, "deadline_s": 30}})
    assert call.program == "self-consistency" and call.question == "What is 2+2?"
    assert call.options == {"budget": 12, "deadline_s": 30}


def test_standard_fields_map_and_explicit_options_win() -> None:
    call = chat_call({"model": "dynasor/code", "messages": USER, "reasoning_effort": "high", "temperature": 0.3, "top_p": 0.9,
                      "max_completion_tokens": 300, "user": "team-a"})
    assert call.options == {"budget": 16, "temperature": 0.3, "top_p": 0.9, "max_tokens": 300} and call.client_id == "team-a"
    assert chat_call({"model": "dynasor/code", "messages": USER, "reasoning_effort": "high", "dynasor": {"budget": 3}}).options["budget"] == 3
    cot = chat_call({"model": "dynasor/cot-probe", "messages": USER, "reasoning_effort": "low", "max_tokens": 200})
    assert cot.options == {"effort": "high", "budget": 4}  # 200 tokens of thought in chunks of 64


def test_plain_policy_takes_the_whole_conversation_and_its_sampling() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *USER, {"role": "assistant", "content": "4"}, *USER]
    call = chat_call({"model": "policy", "messages": messages, "seed": 7, "stop": "\n", "max_tokens": 5, "stream": True,
                      "stream_options": {"include_usage": True}})
    assert call.program is None and call.messages[0]["role"] == "system" and len(call.messages) == 4
    assert call.sampling == {"n": 1, "max_tokens": 5, "seed": 7, "stop": ["\n"]} and call.stream and call.include_usage
    assert completion_call({"model": "policy", "prompt": ["Once"]}).question == "Once"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "dynasor/self-consistency", "messages": [{"role": "system", "content": "x"}, *USER]}, 400, "messages"),
    ({"model": "dynasor/self-consistency", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": "dynasor/self-consistency", "messages": USER, "seed": 3}, 400, "seed"),
    ({"model": "dynasor/self-consistency", "messages": USER, "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "dynasor/self-consistency", "messages": USER, "dynasor": [1]}, 400, "dynasor"),
    ({"model": "dynasor/self-consistency", "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "dynasor/self-consistency", "messages": USER, "user": "a b"}, 400, "user"),
    ({"model": "gpt-4o", "messages": USER}, 404, "model"),
    ({"messages": USER}, 400, "model"),
])
def test_bad_fields_are_refused_by_name(body, status, param) -> None:
    with pytest.raises(ApiError) as e:
        chat_call(body)
    assert (e.value.status, e.value.param) == (status, param)
    assert e.value.body()["error"]["param"] == param


@pytest.mark.parametrize(("message", "status", "param"), [
    ("options.budget: must be an integer in [1, 64], got -1", 400, "dynasor.budget"),
    ("[StatusCode.INVALID_ARGUMENT] options.allocation.kind: unknown", 400, "dynasor.allocation.kind"),
    ("text_input: expected a non-empty question", 400, "messages"),
    ("client_id 'u' has 2 programs in flight, at most 2 (config.pbtxt max_programs_per_client); wait", 429, "user"),
    ("server busy: 256 programs in flight, at most 256 (config.pbtxt max_programs_in_flight); retry on another replica or later", 503, None),
    ("floor: an answer resting on 8 knob units needs about 30 s here now; deadline_s is 3 s", 503, None),
    ("program failed: engine died", 503, None),
    ("policy engine is restarting; retry shortly", 503, None),
    ("sampling_parameters.seed: per-request seeds are refused on this engine", 400, "seed"),
])
def test_server_errors_map_to_openai_statuses(message, status, param) -> None:
    e = server_error(message)
    assert (e.status, e.param) == (status, param)


def test_a_front_whose_server_is_gone_answers_503_and_health_says_not_ready() -> None:
    with TestClient(create_app(f"127.0.0.1:{free_port()}", timeout_s=5)) as http:
        r = http.post("/v1/chat/completions", json={"model": "dynasor/self-consistency", "messages": USER})
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        assert http.get("/health").status_code == 503
        assert http.get("/v1/models").status_code == 200
