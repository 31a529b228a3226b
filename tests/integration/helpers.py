"""Polling helpers shared by the integration tests."""
from __future__ import annotations

import time

from serving.launcher import TritonServer


def metric_values(srv: TritonServer, name: str) -> dict[str, float]:
    """Prometheus samples of one metric on the server's metrics port, keyed by their label text."""
    return srv.metric_values(name)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()
