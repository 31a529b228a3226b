"""A replica's state for HAProxy's agent check (`agent-check agent-port N` on a server line): HAProxy
connects, reads one line and closes. "drain" while the replica drains (no new programs, the ones
it serves go on); otherwise "ready up W%", a weight that falls as the replica's predicted
backlog grows, so `balance leastconn` sends fewer new programs to a replica whose programs still
need much work (the stream count alone cannot tell a program about to settle from one that has
just begun). HAProxy scales a server's configured `weight` by W; give servers `weight 100`."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scheduler_backend.runner import ProgramRunner


@dataclass(frozen=True)
class AgentSettings:
    address: str
    port: int
    horizon_s: float


def agent_settings(p: Mapping[str, str]) -> AgentSettings | None:
    """`dynasor`'s config.pbtxt parameters agent_port (0 or absent: no agent), agent_address and
    agent_horizon_s, checked; a ValueError names the parameter."""
    try:
        port = int(p.get("agent_port", "0"))
    except ValueError:
        raise ValueError(f"parameters.agent_port: expected a port number, got {p.get('agent_port')!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"parameters.agent_port: expected 0 (no agent) to 65535, got {port}")
    try:
        horizon_s = float(p.get("agent_horizon_s", "30"))
    except ValueError:
        raise ValueError(f"parameters.agent_horizon_s: expected seconds, got {p.get('agent_horizon_s')!r}") from None
    if not horizon_s > 0:
        raise ValueError(f"parameters.agent_horizon_s: expected seconds above 0, got {horizon_s:g}")
    return AgentSettings(p.get("agent_address", "127.0.0.1"), port, horizon_s) if port else None


def backlog_weight(remaining_tokens: float, tokens_per_s: float | None, horizon_s: float) -> int:
    """Percent weight: 100 with no predicted work, 50 with `horizon_s` seconds of it at
    `tokens_per_s`, never below 1 (zero weight is the drain's business). Give it the engine's peak
    measured speed, its capacity: the current speed falls with the load itself (a replica with
    fewer programs generates fewer tokens/s, which would make its backlog look as long as a busy
    one's). With no speed measured yet there is no evidence of a backlog: 100."""
    if remaining_tokens <= 0 or not tokens_per_s or tokens_per_s <= 0:
        return 100
    backlog_s = remaining_tokens / tokens_per_s
    return max(1, min(100, round(100 * horizon_s / (horizon_s + backlog_s))))


def runner_weight(runner: ProgramRunner, horizon_s: float) -> int:
    """The weight a replica's agent answers now: its runner's predicted remaining tokens against its
    engine's peak measured tokens/s (the server's agent and the simulator's balancer both ask here)."""
    return backlog_weight(runner.scheduler.total_work(), runner.throughput.peak_rate, horizon_s)


def agent_reply(draining: bool, weight: int) -> str:
    """The agent protocol's line: "drain" forces HAProxy's drain state; "ready" lifts it again."""
    return "drain\n" if draining else f"ready up {weight}%\n"


async def serve_agent(address: str, port: int, reply: Callable[[], str]) -> asyncio.AbstractServer:
    """Listen on address:port; every connection gets `reply()` and is closed."""
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(reply().encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, address, port)
