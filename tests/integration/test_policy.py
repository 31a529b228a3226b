"""The real `policy` model in the real tritonserver on the small model."""
from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import psutil
import pytest

from engines.grpc_stream import StreamCall, StreamError
from tests.integration.helpers import engine_cores, metric_values, readiness_probe, wait_for

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have? Think step by step."


def policy_call(server, *, sampling: dict, stream: bool = False, priority: int | None = None, request_id: str = "", **extra):
    inputs = {"messages": json.dumps([{"role": "user", "content": QUESTION}]), "sampling_parameters": json.dumps(sampling), "stream": stream}
    if priority is not None:
        inputs["priority"] = priority
    inputs.update(extra)
    return StreamCall(server.grpc_url, "policy", inputs, request_id=request_id, timeout_s=300)


def texts_by_sample(responses) -> dict[int, dict]:
    samples: dict[int, dict] = {}
    for r in responses:
        if "text_output" not in r.outputs:
            continue
        for i, idx in enumerate(r.outputs["sample_index"]):
            s = samples.setdefault(int(idx), {"text": "", "tokens": 0, "finish": ""})
            s["text"] += r.outputs["text_output"][i].decode()
            s["tokens"] += int(r.outputs["num_output_tokens"][i])
            s["finish"] = r.outputs["finish_reason"][i].decode() or s["finish"]
    return samples


def test_unstreamed_generation_returns_one_full_response(server):
    responses = policy_call(server, sampling={"max_tokens": 24, "temperature": 0.0}).collect()
    with_text = [r for r in responses if "text_output" in r.outputs]
    assert len(with_text) == 1
    sample = texts_by_sample(responses)[0]
    assert sample["text"].strip()
    assert 1 <= sample["tokens"] <= 24
    assert sample["finish"] in ("stop", "length")
    assert responses[-1].final


def test_streamed_generation_sends_deltas_that_add_up(server):
    streamed = policy_call(server, sampling={"max_tokens": 24, "temperature": 0.0, "ignore_eos": True}, stream=True).collect()
    whole = policy_call(server, sampling={"max_tokens": 24, "temperature": 0.0, "ignore_eos": True}).collect()
    deltas = [r for r in streamed if "text_output" in r.outputs]
    assert len(deltas) > 1, "streaming should send more than one response"
    s, w = texts_by_sample(streamed)[0], texts_by_sample(whole)[0]
    assert s["tokens"] == 24 and s["finish"] == "length"
    assert s["text"] == w["text"], "greedy streamed deltas must add up to the unstreamed text"


def test_n_samples_come_back_with_their_indices(server):
    samples = texts_by_sample(policy_call(server, sampling={"n": 4, "max_tokens": 16, "temperature": 1.0}, stream=True).collect())
    assert sorted(samples) == [0, 1, 2, 3]
    assert all(s["finish"] in ("stop", "length") and s["tokens"] >= 1 for s in samples.values())


def test_priority_is_accepted_and_validated(server):
    samples = texts_by_sample(policy_call(server, sampling={"max_tokens": 8}, priority=-5).collect())
    assert samples[0]["tokens"] >= 1
    with pytest.raises(StreamError, match="priority"):
        StreamCall(server.grpc_url, "policy", {"text_input": "hi", "priority": np.array([1.5], dtype=np.float32)}).collect()


@pytest.mark.parametrize(
    "sampling, field",
    [
        ('{"temperature": "hot"}', "sampling_parameters.temperature"),
        ('{"n": 0}', "sampling_parameters.n"),
        ('{"max_tokens": 100000}', "sampling_parameters.max_tokens"),
        ('{"tempreature": 0.5}', "sampling_parameters.tempreature"),
        ('{"top_p": 1.5}', "sampling_parameters.top_p"),
        ("{not json", "sampling_parameters"),
    ],
)
def test_malformed_sampling_parameters_name_the_field_and_server_keeps_serving(server, sampling, field):
    with pytest.raises(StreamError) as err:
        StreamCall(server.grpc_url, "policy", {"text_input": "hello", "sampling_parameters": sampling}).collect()
    assert field in str(err.value)
    assert texts_by_sample(policy_call(server, sampling={"max_tokens": 4}).collect())[0]["tokens"] >= 1


def test_missing_prompt_is_refused_by_name(server):
    with pytest.raises(StreamError, match="text_input"):
        StreamCall(server.grpc_url, "policy", {"sampling_parameters": "{}"}).collect()


def test_cancelling_a_streamed_request_frees_the_engine(server):
    call = policy_call(server, sampling={"max_tokens": 2000, "ignore_eos": True}, stream=True)
    got = 0
    for _ in call:
        got += 1
        if got == 3:
            break
    assert metric_values(server, "dynasor_engine_unfinished_requests") != {}
    call.close()
    freed = wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) == 0, timeout_s=2.5)
    assert freed, "the engine still holds the cancelled request"


def test_abort_by_request_id_ends_the_call(server):
    rid = f"abort-me-{uuid.uuid4().hex[:8]}"
    call = policy_call(server, sampling={"max_tokens": 2000, "ignore_eos": True}, stream=True, request_id=rid)
    it = iter(call)
    next(it)
    ack = StreamCall(server.grpc_url, "policy", {"abort_request_ids": [rid, "no-such-id"]}).collect()
    assert [x.decode() for x in ack[0].outputs["finish_reason"]] == ["aborted", "unknown"]
    rest = list(it)  # ends with a plain final response: the one ending a BLS response iterator sees
    assert rest and rest[-1].final and len(rest) < 2000
    freed = wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) == 0, timeout_s=2.5)
    assert freed, "the engine still holds the aborted request"


def test_seeded_request_in_a_busy_shared_prefix_batch_does_not_kill_the_engine(server):
    """docs/PLATFORM.md pitfall 12: seeded + chunked prefill killed vLLM-CPU. The seed must be refused
    (or served) while the batch around it completes, and the engine must not die."""
    deaths_before = sum(metric_values(server, "dynasor_engine_deaths_total").values())
    prefix = "Here is a long shared context. " * 150
    results, errors = [], []

    def one(i):
        try:
            call = StreamCall(server.grpc_url, "policy", {"text_input": f"{prefix} Question {i}: say a number.", "sampling_parameters": json.dumps({"n": 4, "max_tokens": 16})})
            results.append(texts_by_sample(call.collect()))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    seeded_error = None
    try:
        StreamCall(server.grpc_url, "policy", {"text_input": f"{prefix} Seeded question.", "sampling_parameters": json.dumps({"n": 4, "max_tokens": 16, "seed": 7})}).collect()
    except StreamError as e:
        seeded_error = str(e)
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 12 and all(len(r) == 4 for r in results)
    if seeded_error is not None:
        assert "seed" in seeded_error
    assert sum(metric_values(server, "dynasor_engine_deaths_total").values()) == deaths_before


def engine_core_pids(server) -> list[int]:
    return [p.pid for p in engine_cores(server)]


@pytest.mark.destructive
def test_killing_the_engine_fails_in_flight_requests_clearly_and_the_server_recovers(server):
    pids = engine_core_pids(server)
    assert len(pids) == 1, f"expected one policy EngineCore under the server, found {pids}"
    errors = []

    def long_call():
        try:
            policy_call(server, sampling={"max_tokens": 3000, "ignore_eos": True}, stream=True).collect()
        except StreamError as e:
            errors.append(str(e))

    t = threading.Thread(target=long_call)
    t.start()
    wait_for(lambda: sum(metric_values(server, "dynasor_engine_unfinished_requests").values()) >= 1, timeout_s=10)
    psutil.Process(pids[0]).kill()
    t.join(timeout=60)
    assert errors and "engine" in errors[0].lower(), errors

    live = wait_for(lambda: server.process.poll() is None, timeout_s=1)
    assert live, "tritonserver died with its engine"
    assert sum(metric_values(server, "dynasor_engine_deaths_total").values()) >= 1
    # Triton's /v2/health/ready stays 200 through the rebuild; the readiness probe does not.
    rebuilding = wait_for(lambda: "policy's vLLM engine is being rebuilt" in (r := readiness_probe(server))[1] and r, 20, 0.5)
    assert rebuilding and rebuilding[0] == 1, rebuilding

    def recovered():
        try:
            return texts_by_sample(policy_call(server, sampling={"max_tokens": 4}).collect())[0]["tokens"] >= 1
        except StreamError:
            return False

    assert wait_for(recovered, timeout_s=300, interval_s=3), "policy did not come back after its engine died"
    assert wait_for(lambda: readiness_probe(server) == (0, "ready"), 10, 0.5), readiness_probe(server)
    new_pids = engine_core_pids(server)
    assert len(new_pids) == 1 and new_pids[0] != pids[0]
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE
