"""A replica's readiness as a Kubernetes readiness probe (or any health checker) needs it: Triton's
`/v2/health/ready` says the server and its models are loaded, but stays 200 while the replica
drains and while a dead vLLM engine is rebuilt, as a Python-backend model cannot change its own
readiness. Those two states live on the metrics port (`dynasor_draining`,
`dynasor_engine_ready`); ready means all three agree. Standard library and prometheus_client's
parser only: an exec probe starts this every few seconds."""
from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def _get(url: str, timeout_s: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def not_ready_reasons(http: str, metrics: str, timeout_s: float = 3.0) -> list[str]:
    """Why the replica at `http` (Triton's HTTP host:port) with metrics at `metrics` (host:port)
    should get no new programs; empty when it is ready."""
    try:
        status, _ = _get(f"http://{http}/v2/health/ready", timeout_s)
    except (urllib.error.URLError, OSError) as e:
        return [f"server: {http} unreachable ({e})"]
    if status != 200:
        return [f"server: /v2/health/ready answered {status} (Triton or a model not ready)"]
    try:
        _, text = _get(f"http://{metrics}/metrics", timeout_s)
    except (urllib.error.URLError, OSError) as e:
        return [f"metrics: {metrics} unreachable ({e})"]
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    draining = [s for s in samples if s.name == "dynasor_draining"]
    engines = [s for s in samples if s.name == "dynasor_engine_ready"]
    reasons = []
    if not draining:
        reasons.append("metrics: no dynasor_draining gauge (is `dynasor` loaded?)")
    if any(s.value != 0 for s in draining):
        reasons.append("draining: this replica admits no new programs")
    if not any(s.labels.get("model") == "policy" for s in engines):
        reasons.append("metrics: no dynasor_engine_ready gauge for policy")
    reasons += [f"engine: {s.labels.get('model', '?')}'s vLLM engine is being rebuilt" for s in engines if s.value != 1]
    return reasons
