"""One real tritonserver (policy, reward and dynasor on the small model) for every integration test,
bound to 127.0.0.1 on free ports, and stopped with proof that nothing it started outlives it."""
from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from serving.launcher import MODEL_REPOSITORY, MODELS_DIR, start_server
from tests.conftest import TEST_MODEL
from tests.integration.helpers import ready_or_stopped

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT_MODEL = Path(__file__).resolve().parent / "bls_contract" / "engine_contract"


def _repository_with_contract_model(dest: Path) -> Path:
    """The shipped model repository plus the test-only model that checks the BLS engine."""
    shutil.copytree(MODEL_REPOSITORY, dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CONTRACT_MODEL, dest / CONTRACT_MODEL.name, ignore=shutil.ignore_patterns("__pycache__"))
    config = dest / CONTRACT_MODEL.name / "config.pbtxt"
    config.write_text(config.read_text().replace('"repo_root", value: { string_value: "" }',
                                                 f'"repo_root", value: {{ string_value: "{REPO_ROOT}" }}'))
    return dest


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not (MODELS_DIR / TEST_MODEL).is_dir():
        pytest.fail(f"models/{TEST_MODEL} is missing: run `make setup` first")
    # The project's defaults, as a user gets them (the engine settings follow this machine), except
    # eager: the plumbing tests do not pay torch.compile's start on every server they start.
    repository = _repository_with_contract_model(tmp_path_factory.mktemp("repo") / "model_repository")
    # One operator limit set low, so test_faults can reach it with two programs.
    srv = ready_or_stopped(start_server(model_repository=repository, policy_model=TEST_MODEL,
                                        dynasor_parameters={"max_programs_per_client": "2"}, engine_overrides={"enforce_eager": True}))
    yield srv
    tree = {p.pid for p in srv.descendants()} | srv.known_pids
    srv.stop()
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes outlived the server: {[psutil.Process(p).cmdline() for p in alive]}"
