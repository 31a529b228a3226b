"""HAProxy's agent check: the weight's shape, the protocol's lines, the settings' refusals, a real
socket, and the shipped HAProxy configuration with agent checks accepted by the real haproxy."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from serving.agent_check import AgentSettings, agent_reply, agent_settings, backlog_weight, serve_agent
from serving.fleet import haproxy_config
from serving.launcher import TritonServer, free_port


def test_the_weight_halves_at_the_horizon_and_falls_with_the_backlog():
    assert backlog_weight(0, 100.0, 30) == 100
    assert backlog_weight(3000, 100.0, 30) == 50  # 30 s of work at 100 tokens/s
    weights = [backlog_weight(tokens, 100.0, 30) for tokens in (0, 500, 3000, 9000, 10**6, 10**9)]
    assert weights == sorted(weights, reverse=True) and weights[-1] == 1, weights
    assert backlog_weight(3000, 200.0, 30) > backlog_weight(3000, 100.0, 30), "a faster engine clears the same work sooner"


def test_no_measured_speed_is_no_evidence_of_a_backlog():
    assert backlog_weight(5000, None, 30) == backlog_weight(5000, 0.0, 30) == 100


def test_the_agent_lines_follow_haproxys_protocol():
    assert agent_reply(True, 80) == "drain\n"
    assert agent_reply(False, 42) == "ready up 42%\n"


@pytest.mark.parametrize("params, field", [
    ({"agent_port": "eighty"}, "parameters.agent_port"),
    ({"agent_port": "70000"}, "parameters.agent_port"),
    ({"agent_port": "9", "agent_horizon_s": "0"}, "parameters.agent_horizon_s"),
    ({"agent_port": "9", "agent_horizon_s": "soon"}, "parameters.agent_horizon_s"),
])
def test_bad_agent_settings_name_their_parameter(params, field):
    with pytest.raises(ValueError, match=field):
        agent_settings(params)


def test_agent_settings_default_to_no_agent():
    assert agent_settings({}) is None and agent_settings({"agent_port": "0"}) is None
    assert agent_settings({"agent_port": "9100"}) == AgentSettings("127.0.0.1", 9100, 30.0)


def test_every_connection_reads_the_state_of_that_moment():
    state = {"draining": False}

    async def run() -> list[bytes]:
        server = await serve_agent("127.0.0.1", 0, lambda: agent_reply(state["draining"], 64))
        port = server.sockets[0].getsockname()[1]
        lines = []
        for draining in (False, True):
            state["draining"] = draining
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            lines.append(await reader.read())  # the agent closes after its line
            writer.close()
        server.close()
        await server.wait_closed()
        return lines

    assert asyncio.run(run()) == [b"ready up 64%\n", b"drain\n"]


def test_haproxy_accepts_the_shipped_configuration_with_agent_checks(tmp_path: Path):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    replicas = [TritonServer(None, free_port(), free_port(), free_port(), tmp_path, tmp_path / "log", agent_port=port)  # type: ignore[arg-type]
                for port in (free_port(), 0)]
    config = haproxy_config(replicas, free_port(), free_port(), free_port())
    assert f"agent-check agent-port {replicas[0].agent_port}" in config
    assert config.count(" agent-check agent-port") == 2, "one agent per backend for the replica that serves one, none for the other"
    (tmp_path / "haproxy.cfg").write_text(config)
    checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
