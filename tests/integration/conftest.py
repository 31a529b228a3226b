"""One real tritonserver (policy, reward and dynasor on the small model) for every integration test,
bound to 127.0.0.1 on free ports, and stopped with proof that nothing it started outlives it."""
from __future__ import annotations

import psutil
import pytest

from serving.launcher import MODELS_DIR, start_server
from tests.conftest import TEST_MODEL


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
    tree = {p.pid for p in srv.descendants()} | srv.known_pids
    srv.stop()
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes outlived the server: {[psutil.Process(p).cmdline() for p in alive]}"
