"""Faults and hostile clients on the real server: a table of bad inputs for all three models over
gRPC and HTTP, strict JSON in every streamed event, cancel on every protocol, the operator's
limits, an engine restart users can see, and nothing left behind by a SIGKILLed server."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

from client.dynasor_client import DynasorClient, ProgramError
from engines.grpc_stream import StreamCall, StreamError
from serving.launcher import start_server
from tests.conftest import TEST_MODEL
from tests.integration.helpers import command_line, engine_cores, metric_values, wait_for

pytestmark = pytest.mark.integration

Q = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
LONG = json.dumps({"budget": 32, "round_size": 8, "max_tokens": 1500, "settle_threshold": 1.0, "temperature": 1.0})
MESSAGES = json.dumps([{"role": "user", "content": Q}])
BAD_UTF8 = b"\xff\xfe not utf-8"

# (model, inputs, request parameters, what the error must start with or contain, protocols)
CASES = [
    ("dynasor", {"text_input": Q, "options": '{"budget": 100, "budget": 1}'}, {}, "options: duplicate key 'budget'", "grpc http"),
    ("dynasor", {"text_input": Q, "options": "[" * 100_000}, {}, "options: JSON nested 100000 deep", "grpc http"),
    ("dynasor", {"text_input": Q, "options": '{"temperature": NaN}'}, {}, "options: NaN is not a JSON value", "grpc http"),
    ("dynasor", {"text_input": Q, "options": json.dumps({"budget": 64, "max_tokens": 2048})}, {},
     "options.budget: with these options self-consistency may generate up to 131072 tokens", "grpc http"),
    ("dynasor", {"text_input": BAD_UTF8}, {}, "text_input: not valid UTF-8", "grpc"),
    ("dynasor", {"text_input": Q, "options": BAD_UTF8}, {}, "options: not valid UTF-8", "grpc"),
    ("dynasor", {"text_input": Q}, {"program": 5}, "program: must be a string", "grpc"),
    ("dynasor", {"text_input": Q}, {"client_id": "../../etc"}, "client_id: expected", "grpc http"),
    ("dynasor", {"text_input": ""}, {"cancel_program": "x; rm -rf"}, "cancel_program: expected a program_id", "grpc http"),
    ("dynasor", {"text_input": ""}, {"cancel_program": "0" * 32}, "cancel_program: no program", "grpc http"),
    ("dynasor", {"text_input": ""}, {"drain": -5}, "drain: expected the grace period in seconds", "grpc http"),
    ("dynasor", {"text_input": Q, "options": json.dumps({"top_k": 10**12})}, {}, "options.top_k", "grpc http"),
    ("policy", {"text_input": Q, "sampling_parameters": '{"n": 1, "n": 8}'}, {}, "sampling_parameters: duplicate key 'n'", "grpc http"),
    ("policy", {"text_input": Q, "sampling_parameters": json.dumps({"top_k": 10**12})}, {}, "sampling_parameters.top_k: at most the vocabulary size", "grpc http"),
    ("policy", {"text_input": Q, "sampling_parameters": json.dumps({"stop_token_ids": [10**9]})}, {}, "sampling_parameters.stop_token_ids", "grpc http"),
    ("policy", {"text_input": Q, "sampling_parameters": '{"temperature": Infinity}'}, {}, "sampling_parameters: Infinity", "grpc http"),
    ("policy", {"messages": "[" * 5000 + "]" * 5000}, {}, "messages: JSON nested 5000 deep", "grpc http"),
    ("policy", {"text_input": BAD_UTF8}, {}, "text_input: not valid UTF-8", "grpc"),
    ("policy", {"messages": BAD_UTF8}, {}, "messages: not valid UTF-8", "grpc"),
    ("policy", {"text_input": Q}, {}, "parameters: duplicate key 'top_k'", "http-raw"),
    ("reward", {"question": BAD_UTF8, "candidates": ["x"]}, {}, "question: not valid UTF-8", "grpc"),
    ("reward", {"question": Q, "candidates": [BAD_UTF8]}, {}, "candidates[0]: not valid UTF-8", "grpc"),
    ("reward", {"question": "  ", "candidates": ["x"]}, {}, "question: must not be empty", "grpc http"),
    ("reward", {"question": Q, "candidates": ["x" * 40_000]}, {}, "candidates[0]: longer than", "grpc"),
]


def _grpc_error(server, model, inputs, parameters) -> str:
    with pytest.raises(StreamError) as err:
        StreamCall(server.grpc_url, model, inputs, parameters=parameters, timeout_s=60).collect()
    return str(err.value)


def _http_error(server, model, body: str) -> tuple[int, str]:
    r = requests.post(f"http://{server.http_url}/v2/models/{model}/generate_stream", data=body, timeout=60)
    text = r.text.strip()
    for line in text.splitlines():
        if line.startswith("data:"):
            text = line[len("data:"):]
    return r.status_code, json.loads(text)["error"]


@pytest.mark.parametrize("model, inputs, parameters, message, protocols", CASES,
                         ids=[f"{c[0]}-{c[3][:40]}" for c in CASES])
def test_every_refusal_names_its_field_over_grpc_and_http(server, model, inputs, parameters, message, protocols):
    if "grpc" in protocols.split():
        assert message in _grpc_error(server, model, inputs, parameters)
    if "http" in protocols.split():
        status, error = _http_error(server, model, json.dumps({**inputs, **parameters}))
        assert status == 400 and message in error, (status, error)
    if protocols == "http-raw":  # a duplicate key in the HTTP body itself reaches the model as parameters
        body = json.dumps(inputs)[:-1] + ', "top_k": 5, "top_k": 6}'
        status, error = _http_error(server, model, body)
        assert status == 400 and message in error, (status, error)


def test_wrong_json_types_over_http_are_answered_by_triton_before_the_model(server):
    """Triton 2.51's HTTP front end converts inputs itself: a number where a string input belongs
    never reaches the model. The README says so; this pins what a client sees."""
    status, error = _http_error(server, "dynasor", json.dumps({"text_input": 5}))
    assert status >= 400 and "JSON" in error
    status, error = _http_error(server, "dynasor", json.dumps({"text_input": Q, "options": {"budget": 3}}))
    assert status >= 400 and "non-string" in error


def test_the_server_keeps_serving_after_the_whole_table(server):
    for model, inputs, parameters, _, protocols in CASES:
        if "grpc" in protocols.split():
            _grpc_error(server, model, inputs, parameters)
    result = DynasorClient(server.grpc_url).solve(Q, "self-consistency", {"budget": 2, "round_size": 2, "max_tokens": 32})
    assert result.final and result.steps == 2


def _strict(line: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a streamed event: {line[:200]}")

    return json.loads(line, parse_constant=refuse)


def test_every_streamed_event_is_strict_json(server):
    body = {"text_input": Q, "sampling_parameters": json.dumps({"temperature": 0, "max_tokens": 8}), "stream": True}
    events = []
    for model, payload in (("policy", body), ("policy", {**body, "sampling_parameters": json.dumps({"max_tokens": 4, "logprobs": 2})}),
                           ("dynasor", {"text_input": Q, "options": json.dumps({"budget": 2, "round_size": 2, "max_tokens": 24})})):
        r = requests.post(f"http://{server.http_url}/v2/models/{model}/generate_stream", json=payload, timeout=120)
        assert r.status_code == 200, r.text
        events += [_strict(line[len("data:"):]) for line in r.text.splitlines() if line.startswith("data:")]
    assert len(events) >= 4 and all("error" not in e for e in events)
    with_logprobs = [e for e in events if e.get("logprobs")]
    assert with_logprobs and all(isinstance(e["cumulative_logprob"], (int, float)) for e in with_logprobs)


def _in_flight(server) -> tuple[float, float]:
    return (sum(metric_values(server, "dynasor_programs_in_flight").values()),
            sum(metric_values(server, "dynasor_engine_unfinished_requests").values()))


def _start_http_program(server, options: str = LONG, progress: bool = True) -> tuple[socket.socket, dict]:
    """A program over HTTP generate_stream on a raw socket; returns it with its first event."""
    payload = json.dumps({"text_input": Q, "options": options, "progress": progress})
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    sock.sendall((f"POST /v2/models/dynasor/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(payload)}\r\n\r\n{payload}").encode())
    buf = b""
    while b"\n\n" not in buf.partition(b"data:")[2]:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the stream before the first event"
        buf += chunk
    event = json.loads(buf.partition(b"data:")[2].split(b"\n\n")[0])
    return sock, event


def test_an_http_client_that_goes_away_cancels_its_program_within_2s(server):
    sock, first = _start_http_program(server)
    assert json.loads(first["progress"])["program_id"]
    assert wait_for(lambda: _in_flight(server)[1] >= 1, timeout_s=30), "the program never reached the engine"
    sock.close()
    t0 = time.monotonic()
    freed = wait_for(lambda: _in_flight(server) == (0, 0), timeout_s=5)
    assert freed and time.monotonic() - t0 <= 2.5, f"still in flight {time.monotonic() - t0:.1f} s after the client left: {_in_flight(server)}"


def test_cancel_program_stops_a_program_by_its_id_over_http_within_2s(server):
    sock, first = _start_http_program(server)
    program_id = json.loads(first["progress"])["program_id"]
    assert wait_for(lambda: _in_flight(server)[1] >= 1, timeout_s=30)
    t0 = time.monotonic()
    ack = DynasorClient(server.http_url, protocol="http").cancel(program_id)
    assert ack.final and ack.stop_reason == "cancelled"
    assert wait_for(lambda: _in_flight(server) == (0, 0), timeout_s=5) and time.monotonic() - t0 <= 2.5
    sock.settimeout(10)
    rest = b""
    while b"cancelled" not in rest:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    sock.close()
    assert b'"stop_reason":"cancelled"' in rest, "the cancelled program's own stream ends with stop_reason cancelled"


def test_programs_per_client_are_limited_by_parameter_and_by_header(server):
    """The session server runs with max_programs_per_client = 2 (tests/integration/conftest.py)."""
    calls = [StreamCall(server.grpc_url, "dynasor", {"text_input": Q, "options": LONG}, parameters={"client_id": "team-a"})
             for _ in range(2)]
    try:
        assert wait_for(lambda: _in_flight(server)[0] >= 2, timeout_s=30)
        over = _grpc_error(server, "dynasor", {"text_input": Q, "options": LONG}, {"client_id": "team-a"})
        assert "client_id 'team-a' has 2 programs in flight, at most 2" in over
        with pytest.raises(StreamError, match="client_id 'team-a' has 2"):
            StreamCall(server.grpc_url, "dynasor", {"text_input": Q, "options": LONG},
                       headers={"dynasor-client-id": "team-a"}, timeout_s=60).collect()
        status, error = _http_error(server, "dynasor", json.dumps({"text_input": Q, "options": LONG, "client_id": "team-a"}))
        assert status >= 400 and "client_id 'team-a' has 2" in error
        other = DynasorClient(server.grpc_url).solve(Q, "self-consistency", {"budget": 2, "round_size": 2, "max_tokens": 24})
        assert other.final, "a client without an id is not held to another client's limit"
    finally:
        for call in calls:
            call.close()
    assert wait_for(lambda: _in_flight(server) == (0, 0), timeout_s=10)


@pytest.mark.destructive
def test_during_an_engine_restart_requests_fail_at_once_and_readiness_returns(server):
    (core,) = engine_cores(server)
    core.kill()
    answers = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        for model, inputs in (("policy", {"text_input": Q, "sampling_parameters": json.dumps({"max_tokens": 4})}),
                              ("dynasor", {"text_input": Q, "options": json.dumps({"budget": 2, "round_size": 2, "max_tokens": 16})})):
            started = time.monotonic()
            try:
                StreamCall(server.grpc_url, model, inputs, timeout_s=5).collect()
                answers.append((model, "answer", time.monotonic() - started))
            except StreamError as e:
                answers.append((model, str(e), time.monotonic() - started))
        time.sleep(0.25)
    assert len(answers) >= 8
    # "At once": each answer well inside the rebuild (16 s or more here), which a request held for it
    # would wait out; 3 s, not 1, as the rebuild itself loads both cores (a fresh-clone run saw 1.3 s).
    assert all(seconds < 3.0 for _, _, seconds in answers), answers
    errors = [message for _, message, _ in answers if message != "answer"]
    assert errors and all("engine" in m and ("restarting" in m or "died" in m) for m in errors), errors
    assert sum(metric_values(server, "dynasor_engine_ready").values()) == 0, "the gauge shows the rebuild"
    assert wait_for(lambda: sum(metric_values(server, "dynasor_engine_ready").values()) == 1, timeout_s=300, interval_s=1)
    done = StreamCall(server.grpc_url, "policy", {"text_input": Q, "sampling_parameters": json.dumps({"max_tokens": 4})}).collect()
    assert done and done[-1].final




def _tree(srv) -> list[psutil.Process]:
    return [psutil.Process(srv.process.pid), *srv.descendants()]


def _alive(processes: list[psutil.Process]) -> list[str]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.destructive
@pytest.mark.parametrize("restart_first", [False, True], ids=["first-engine", "rebuilt-engine"])
def test_nothing_outlives_a_sigkilled_server(restart_first):
    srv = start_server(policy_model=TEST_MODEL, engine_overrides={"enforce_eager": True})
    try:
        srv.wait_ready(timeout_s=600)
        if restart_first:
            (core,) = engine_cores(srv)
            core.kill()
            rebuilt = wait_for(lambda: [p for p in engine_cores(srv) if p.pid != core.pid], timeout_s=300, interval_s=1)
            assert rebuilt, "no engine was rebuilt"
            time.sleep(2)
        tree = _tree(srv)
        assert any("EngineCore" in command_line(p) for p in tree) and any("serving.reaper" in command_line(p) for p in tree)
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait()
        left = wait_for(lambda: not _alive(tree), timeout_s=10, interval_s=0.5)
        assert left, f"outlived the SIGKILLed server by 10 s: {_alive(tree)}"
    finally:
        srv.stop()


def test_programs_over_http_and_grpc_run_side_by_side_with_hostile_traffic(server):
    """Bad requests in a loop on two threads while a good program runs: it completes unharmed."""
    stop = threading.Event()

    def hostile():
        while not stop.is_set():
            for model, inputs, parameters, _, protocols in CASES[:6]:
                if "grpc" in protocols.split():
                    try:
                        StreamCall(server.grpc_url, model, inputs, parameters=parameters, timeout_s=30).collect()
                    except StreamError:
                        pass

    threads = [threading.Thread(target=hostile) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        good = DynasorClient(server.http_url, protocol="http").solve(Q, "self-consistency", {"budget": 4, "round_size": 2, "max_tokens": 32})
    except ProgramError as e:
        pytest.fail(f"the good program failed next to hostile traffic: {e}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert good.final and good.steps == 4
