"""N local replicas behind HAProxy: for trying a fleet on one machine and for the fleet tests.

Each replica is a whole server (`start_server`: dynasor + policy + reward on free ports); HAProxy,
the distribution's, balances every program stream on its own over them with the configuration in
deploy/haproxy/haproxy.cfg.in (least streams served, draining replicas taken out by their
metrics, weighted by each replica's predicted backlog through HAProxy's agent check). Nothing here balances or places anything itself: a production fleet is the same
replicas under Kubernetes behind the same proxy (deploy/)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.launcher import REPO_ROOT, TritonServer, free_port, start_server

HAPROXY_TEMPLATE = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg.in"


def haproxy_config(replicas: list[TritonServer], grpc_port: int, http_port: int, stats_port: int, address: str = "127.0.0.1") -> str:
    """The shipped HAProxy configuration with one server line per replica in each backend (and
    the replica's agent check where it serves one)."""
    def agent(r: TritonServer) -> str:
        return f" agent-check agent-port {r.agent_port}" if r.agent_port else ""

    grpc = "\n".join(f"    server r{i} 127.0.0.1:{r.grpc_port} proto h2 check port {r.metrics_port} check-proto h1{agent(r)}"
                     for i, r in enumerate(replicas, 1))
    http = "\n".join(f"    server r{i} 127.0.0.1:{r.http_port} check port {r.metrics_port}{agent(r)}" for i, r in enumerate(replicas, 1))
    return HAPROXY_TEMPLATE.read_text().format(address=address, grpc_port=grpc_port, http_port=http_port, stats_port=stats_port,
                                               grpc_servers=grpc, http_servers=http)


@dataclass
class Fleet:
    replicas: list[TritonServer]
    proxy: subprocess.Popen
    grpc_port: int
    http_port: int
    stats_port: int
    run_dir: Path
    stopped: set[int] = field(default_factory=set)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Every replica ready and every one in service at the proxy."""
        for r in self.replicas:
            r.wait_ready(timeout_s)
        deadline = time.monotonic() + 30
        while self.in_service() != len(self.replicas):
            if self.proxy.poll() is not None:
                raise RuntimeError(f"haproxy exited with code {self.proxy.returncode}; log {self.run_dir / 'haproxy.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy has {self.in_service()} of {len(self.replicas)} replicas up after 30 s")
            time.sleep(0.2)

    def proxy_stats(self) -> list[dict[str, str]]:
        """HAProxy's own per-server statistics (its CSV), for the gRPC backend."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as r:
            lines = r.read().decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return [row for row in rows if row["pxname"] == "grpc_replicas" and row["svname"] not in ("FRONTEND", "BACKEND")]

    def in_service(self) -> int:
        try:
            return sum(row["status"].startswith("UP") for row in self.proxy_stats())
        except (urllib.error.URLError, ConnectionError, TimeoutError, IndexError, KeyError):
            return 0

    def stop(self) -> None:
        """The proxy, then every replica, each by its own pid."""
        if self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                self.proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait(timeout=10)
        for r in self.replicas:
            r.stop()


def start_fleet(replicas: int, policy_model: str | None = None, grpc_port: int | None = None, http_port: int | None = None,
                stats_port: int | None = None, address: str = "127.0.0.1", **server_kw: Any) -> Fleet:
    """Start `replicas` servers and HAProxy in front of them; returns before they are ready."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).is_file():
        raise RuntimeError("haproxy is not installed (`make setup` installs the distribution's package as root)")
    run_dir = Path(tempfile.mkdtemp(prefix="dynasor-fleet-"))
    servers: list[TritonServer] = []
    try:
        for i in range(replicas):
            servers.append(start_server(policy_model=policy_model, run_dir=run_dir / f"replica{i + 1}", agent_port=free_port(), **server_kw))
        grpc_port, http_port, stats_port = grpc_port or free_port(), http_port or free_port(), stats_port or free_port()
        config = run_dir / "haproxy.cfg"
        config.write_text(haproxy_config(servers, grpc_port, http_port, stats_port, address))
        log = open(run_dir / "haproxy.log", "ab")
        proxy = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return Fleet(servers, proxy, grpc_port, http_port, stats_port, run_dir)
