"""Drain, never drop, on the real server: a drained replica refuses new programs at once with
UNAVAILABLE saying it drains, lets those in flight finish, stops the ones still running when the
grace period ends with their best answers so far (stop reason "drained"), and exports its load
and its draining state on the metrics port. `dynasor serve` drains on SIGTERM before it stops."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from client.dynasor_client import DynasorClient, ProgramError
from serving.launcher import REPO_ROOT, TritonServer, free_port, start_server
from tests.conftest import TEST_MODEL
from tests.integration.helpers import metric_values, readiness_probe, wait_for

pytestmark = pytest.mark.integration

Q = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
SHORT = {"budget": 4, "round_size": 4, "max_tokens": 48}
# Rounds of two short samples, never settled: a round ends within seconds even on a slow CPU, and
# the program runs far past any grace period used here.
LONG = {"budget": 64, "round_size": 2, "max_tokens": 96, "settle_threshold": 1.0, "temperature": 1.0}


def _gauge(srv: TritonServer, name: str) -> float:
    return sum(metric_values(srv, name).values())


def _run(client: DynasorClient, options: dict, out: dict, key: str, seen: list | None = None) -> None:
    try:
        out[key] = client.solve(Q, "self-consistency", options, on_progress=seen.append if seen is not None else None)
    except ProgramError as e:
        out[key] = e


def _nothing_left(tree: set[int]) -> list[int]:
    return [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_a_drained_replica_refuses_new_programs_finishes_the_rest_and_stops_the_late_ones_with_their_answers():
    srv = start_server(policy_model=TEST_MODEL, engine_overrides={"enforce_eager": True})
    try:
        srv.wait_ready(timeout_s=600)
        client = DynasorClient(srv.grpc_url)
        results: dict = {}
        long_progress: list = []
        programs = [threading.Thread(target=_run, args=(client, LONG, results, "long", long_progress)),
                    threading.Thread(target=_run, args=(client, SHORT, results, "short"))]
        # The long program has an answer to be stopped with (a finished round) before the drain
        # begins, however slow the machine; the short one is sent next and runs through the drain.
        programs[0].start()
        assert wait_for(lambda: any(p.steps >= 1 for p in long_progress), 120), "the long program finished no round"
        programs[1].start()
        assert wait_for(lambda: _gauge(srv, "dynasor_programs_running") >= 2, 30), "the two programs never ran"
        assert wait_for(lambda: _gauge(srv, "dynasor_predicted_remaining_tokens") > 0, 5)
        assert wait_for(lambda: _gauge(srv, "dynasor_engine_tokens_per_second") > 0, 10)
        assert _gauge(srv, "dynasor_draining") == 0
        assert readiness_probe(srv) == (0, "ready")

        grace = 8.0
        progress: list = []
        drained: dict = {}
        t0 = time.monotonic()
        # Over HTTP generate_stream, as a preStop hook with curl would send it; programs over gRPC.
        http = DynasorClient(srv.http_url, protocol="http")
        drainer = threading.Thread(target=lambda: drained.update(final=http.drain(grace, progress.append), at=time.monotonic()))
        drainer.start()
        assert wait_for(lambda: _gauge(srv, "dynasor_draining") == 1, 5)

        t_new = time.monotonic()
        with pytest.raises(ProgramError, match="server draining: this replica admits no new programs"):
            client.solve(Q, "self-consistency", SHORT)
        assert time.monotonic() - t_new < 2, "a refusal while draining must come at once"
        # Kubernetes' readiness probe takes the pod out of its Services while it drains.
        code, said = readiness_probe(srv)
        assert code == 1 and "draining" in said, said
        # The client library's resubmission: a program refused UNAVAILABLE before it streamed
        # anything is sent again (behind a proxy, to another replica); here every try meets the drain.
        refused = sum(v for k, v in metric_values(srv, "dynasor_refusals_total").items() if 'cause="draining"' in k)
        with pytest.raises(ProgramError, match=r"server draining.*\(after 2 resubmissions\)"):
            client.solve(Q, "self-consistency", SHORT, resubmit=2)
        assert sum(v for k, v in metric_values(srv, "dynasor_refusals_total").items() if 'cause="draining"' in k) == refused + 3

        for t in programs:
            t.join(timeout=grace + 60)
        drainer.join(timeout=grace + 60)
        short, long = results["short"], results["long"]
        assert not isinstance(short, Exception) and short.stop_reason != "drained", short
        assert not isinstance(long, Exception), long
        assert long.final and long.stop_reason == "drained" and long.steps >= 1 and long.tokens_used > 0, long
        assert grace - 1 <= drained["at"] - t0 <= grace + 10
        final = drained["final"]
        assert final.final and final.details["drained"] is True and final.details["programs_in_flight"] == 0
        assert progress and progress[0].details["programs_in_flight"] >= 1
        assert sum(v for k, v in metric_values(srv, "dynasor_refusals_total").items() if 'cause="draining"' in k) >= 1
        assert wait_for(lambda: _gauge(srv, "dynasor_programs_running") == 0, 3), "the load gauges follow within a second or two"
        assert _gauge(srv, "dynasor_draining") == 1
    finally:
        tree = srv.known_pids | {p.pid for p in srv.descendants()}
        srv.stop()
    assert not _nothing_left(tree)


def test_dynasor_serve_drains_on_sigterm_so_a_program_in_flight_gets_its_answer():
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "client.cli", "serve", "--model", TEST_MODEL, "--engine-arg", "enforce_eager=true",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--drain-grace", "60"]
    serve = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(serve.stdout.readline, "")), daemon=True)
    reader.start()
    tree: set[int] = set()
    try:
        assert wait_for(lambda: any("dynasor: ready" in x for x in lines) or serve.poll() is not None, 600, 0.5)
        assert serve.poll() is None, "".join(lines)
        client = DynasorClient(f"127.0.0.1:{grpc}")
        results: dict = {}
        program = threading.Thread(target=_run, args=(client, {**SHORT, "budget": 8, "max_tokens": 128}, results, "p"))
        program.start()
        time.sleep(1.0)  # the program is in flight
        tree = {serve.pid, *(p.pid for p in psutil.Process(serve.pid).children(recursive=True))}
        serve.send_signal(signal.SIGTERM)
        program.join(timeout=120)
        assert serve.wait(timeout=180) == 0, "".join(lines)
        result = results["p"]
        assert not isinstance(result, Exception), f"{result}\n{''.join(lines)}"
        assert result.final and result.stop_reason in ("settled", "cap", "hopeless", "finished"), result
        out = "".join(lines)
        assert "dynasor: draining (grace 60 s)" in out and "dynasor: drained" in out and out.index("drained") < out.index("stopping tritonserver")
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
    assert wait_for(lambda: not _nothing_left(tree), 20), [psutil.Process(p).cmdline() for p in _nothing_left(tree)]
