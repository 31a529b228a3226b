"""Polling helpers shared by the integration tests."""
from __future__ import annotations

import time

from serving.launcher import TritonServer


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
