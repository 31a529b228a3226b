"""Polling helpers shared by the integration tests."""
from __future__ import annotations

import re
import time
import urllib.request

from serving.launcher import TritonServer


def metric_values(srv: TritonServer, name: str) -> dict[str, float]:
    """Prometheus samples of one metric on the server's metrics port, keyed by their label text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()
