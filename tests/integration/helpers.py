"""Polling helpers shared by the integration tests."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil

from serving.launcher import REPO_ROOT, TritonServer


def metric_values(srv: TritonServer, name: str) -> dict[str, float]:
    """Prometheus samples of one metric on the server's metrics port, keyed by their label text."""
    return srv.metric_values(name)


def ready_or_stopped(srv: TritonServer, timeout_s: float = 600) -> TritonServer:
    """The server once ready; stopped (nothing left running) if it never gets there."""
    try:
        srv.wait_ready(timeout_s=timeout_s)
    except BaseException:
        srv.stop()
        raise
    return srv


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()


def command_line(p: psutil.Process) -> str:
    """The command line, or "" for a process already gone or a zombie (an engine just killed)."""
    try:
        return " ".join(p.cmdline() or [p.name()])
    except psutil.NoSuchProcess:
        return ""


def engine_cores(srv: TritonServer, model: str | None = None) -> list[psutil.Process]:
    """The vLLM EngineCore processes under the server; with `model`, only the one its stub started."""
    def served_by_model(p: psutil.Process) -> bool:
        try:
            return any(f"/{model}/1/model.py" in command_line(a) for a in p.parents())
        except psutil.NoSuchProcess:
            return False

    return [p for p in srv.descendants() if "EngineCore" in command_line(p) and (model is None or served_by_model(p))]


def readiness_probe(srv: TritonServer) -> tuple[int, str]:
    """`dynasor ready` against the server, run as kubelet runs an exec probe: exit code and output."""
    done = subprocess.run([sys.executable, "-m", "client.cli", "ready", "--http", srv.http_url,
                           "--metrics", f"127.0.0.1:{srv.metrics_port}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()
