"""Two real replicas behind the real HAProxy (the distribution's, configured from
deploy/haproxy/haproxy.cfg.in): programs from one client connection spread over both; a replica
SIGKILLed mid-program fails its programs at the client within 2 s and later ones run on the
survivor; a drained replica finishes what it runs and leaves the proxy's rotation. Through its
agent check a replica's weight at the proxy falls while it has predicted work; a replica whose
engine is being rebuilt is out of the rotation until it serves again."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from client.dynasor_client import DynasorClient, ProgramError
from serving.fleet import start_fleet
from tests.conftest import TEST_MODEL
from tests.integration.helpers import engine_cores, metric_values, wait_for

pytestmark = pytest.mark.integration

Q = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
SHORT = {"budget": 4, "round_size": 4, "max_tokens": 48}
# Never settles; its deadline ends it with its best answer so far.
LONG = {"budget": 32, "round_size": 2, "max_tokens": 256, "settle_threshold": 1.0, "temperature": 1.0, "deadline_s": 15}


def _served(replica) -> float:
    """Programs a replica has ended, whatever their outcome (its own metrics, not the proxy's)."""
    return sum(metric_values(replica, "dynasor_programs_total").values())


def _running(replica) -> float:
    return sum(metric_values(replica, "dynasor_programs_in_flight").values())


def _agent_line(replica) -> str:
    """What HAProxy's agent check reads from the replica."""
    with socket.create_connection(("127.0.0.1", replica.agent_port), timeout=5) as conn:
        return conn.makefile().read()


def _weights(fleet) -> dict[str, int]:
    """Each replica's weight at the proxy now (gRPC backend), by server name."""
    return {row["svname"]: int(row["weight"]) for row in fleet.proxy_stats()}


@pytest.fixture(scope="module")
def fleet():
    f = start_fleet(2, TEST_MODEL, engine_overrides={"enforce_eager": True})
    try:
        f.wait_ready(timeout_s=600)
        yield f
    finally:
        f.stop()


def test_programs_from_one_connection_spread_over_both_replicas(fleet):
    client = DynasorClient(fleet.grpc_url)  # one channel: a layer-4 balancer would pin it to one replica
    before = [_served(r) for r in fleet.replicas]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: client.solve(Q, "self-consistency", SHORT), range(8)))
    assert all(r.final for r in results)
    per_replica = [_served(r) - b for r, b in zip(fleet.replicas, before)]
    assert sum(per_replica) == 8 and min(per_replica) >= 2, per_replica
    http = DynasorClient(fleet.http_url, protocol="http")
    assert http.solve(Q, "self-consistency", SHORT).final


def test_the_proxy_weights_a_replica_down_while_it_has_predicted_work(fleet):
    busy, idle = fleet.replicas
    assert wait_for(lambda: _weights(fleet) == {"r1": 100, "r2": 100}, 10), _weights(fleet)
    assert _agent_line(busy) == "ready up 100%\n"
    result: dict = {}
    # Straight to r1, past the proxy: a program that never settles, ended by its deadline.
    program = threading.Thread(target=lambda: result.update(p=DynasorClient(busy.grpc_url).solve(Q, "self-consistency", LONG)))
    program.start()
    lowered = wait_for(lambda: (w := _weights(fleet))["r1"] < 100 and w, 10)
    assert lowered and lowered["r2"] == 100, lowered
    line = _agent_line(busy)
    assert line.startswith("ready up ") and int(line.split()[-1].rstrip("%")) < 100, line
    program.join(timeout=60)
    assert result["p"].final
    assert wait_for(lambda: _weights(fleet)["r1"] == 100, 10), "the weight comes back once the work is done"


def test_a_replica_rebuilding_its_engine_is_out_of_the_rotation_until_it_serves(fleet):
    replica = fleet.replicas[0]
    (core,) = engine_cores(replica, "policy")
    core.kill()
    assert wait_for(lambda: fleet.in_service() == 1, 10), "a replica whose engine is down fails the proxy's check"
    assert wait_for(lambda: fleet.in_service() == 2, 300, 1.0), "back in the rotation once its engine serves again"
    assert DynasorClient(replica.grpc_url).solve(Q, "self-consistency", SHORT).final


def test_a_sigkilled_replica_fails_its_programs_within_2s_and_later_ones_run_on_the_survivor(fleet):
    client = DynasorClient(fleet.grpc_url)
    outcomes: dict[int, tuple[object, float]] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = (client.solve(Q, "self-consistency", LONG), time.monotonic())
        except ProgramError as e:
            outcomes[i] = (e, time.monotonic())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    victim, survivor = fleet.replicas
    assert wait_for(lambda: _running(victim) >= 1 and _running(survivor) >= 1, 30), "one long program on each replica"
    killed_at = time.monotonic()
    os.killpg(victim.process.pid, signal.SIGKILL)
    failed = wait_for(lambda: sum(isinstance(o, Exception) for o, _ in outcomes.values()) >= 1, 10)
    assert failed, "the killed replica's program must end at the client"
    (error, at), = [(o, t) for o, t in outcomes.values() if isinstance(o, Exception)]
    assert at - killed_at < 2.0, f"error after {at - killed_at:.1f} s: {error}"
    assert wait_for(lambda: fleet.in_service() == 1, 10)
    after = [client.solve(Q, "self-consistency", SHORT, resubmit=3) for _ in range(3)]
    assert all(r.final for r in after), "programs after the kill run on the survivor"
    for t in threads:
        t.join(timeout=60)
    survived = [o for o, _ in outcomes.values() if not isinstance(o, Exception)]
    assert len(survived) == 1 and survived[0].final, "the survivor's own program was not disturbed"


def test_a_drained_replica_finishes_its_programs_and_leaves_the_rotation(fleet):
    survivor = fleet.replicas[1]
    client = DynasorClient(fleet.grpc_url)
    result: dict = {}
    program = threading.Thread(target=lambda: result.update(p=client.solve(Q, "self-consistency", {**SHORT, "budget": 8, "max_tokens": 96})))
    program.start()
    assert wait_for(lambda: _running(survivor) >= 1, 10)
    drained = DynasorClient(survivor.grpc_url).drain(60)
    program.join(timeout=60)
    assert drained.details["programs_in_flight"] == 0
    assert result["p"].final and result["p"].stop_reason != "drained", "the program in flight finished on its own"
    assert _agent_line(survivor) == "drain\n"
    assert wait_for(lambda: fleet.in_service() == 0, 5), "a draining replica fails the proxy's check"
    t0 = time.monotonic()
    with pytest.raises(ProgramError):
        client.solve(Q, "self-consistency", SHORT)
    assert time.monotonic() - t0 < 5, "with no replica in service the proxy answers at once"
