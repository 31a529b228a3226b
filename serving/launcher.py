"""Start and stop the real `tritonserver` from the nvidia-pytriton wheel with this model repository.

Everything docs/PLATFORM.md found necessary happens here once: the backend folder with the stub built
for the running Python, the venv first on PATH and its libpython first on LD_LIBRARY_PATH, 127.0.0.1
by default, and a stop that leaves no engine process behind (the server runs in its own process
group, and every process of that tree is accounted for by pid).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from engines.engine_settings import settings_for_this_machine

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODELS_DIR = REPO_ROOT / "models"
VLLM_MODELS = ("policy",)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range, never handed out before by this process.

    A port the kernel picked (bind to 0) is ephemeral: between choosing it and the server binding
    it (Triton binds gRPC only after its models load, tens of seconds later), any outgoing
    connection on the machine may be given it, and the server then fails with "Address already in
    use". Ports below the ephemeral range are only ever taken by an explicit bind."""
    high = _ephemeral_start()
    low = max(1024, high - 12000)
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high - 1}")


def _pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def _backend_dir(run_dir: Path) -> Path:
    """Triton wants backends/python/{libtriton_python.so, utils, stub}; the wheel ships one stub per
    Python version, and the stub must match the interpreter that runs the models."""
    triton = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton ships no Python-backend stub for Python {version}")
    python_dir = run_dir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (triton / "backends" / "python" / "libtriton_python.so", triton / "backends" / "python" / "triton_python_backend_utils.py", stub):
        (python_dir / src.name).unlink(missing_ok=True)
        (python_dir / src.name).symlink_to(src)
    return run_dir / "backends"


def resolve_model(model: str) -> str:
    """NAME of a prepared model under models/, a folder, or a Hugging Face id (used as given)."""
    if (MODELS_DIR / model).is_dir():
        return str(MODELS_DIR / model)
    if Path(model).is_dir():
        return str(Path(model).resolve())
    return model


def server_env() -> dict[str, str]:
    env = os.environ.copy()
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"  # the stub finds its interpreter here (pitfall 4)
    libs = [sysconfig.get_config_var("LIBDIR"), str(_pytriton_dir().parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)  # same libpython as the venv's (pitfall 3)
    env.setdefault("DYNASOR_MODELS_DIR", str(MODELS_DIR))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM-CPU refuses the default (pitfall 6)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class TritonServer:
    """A running tritonserver; `stop()` ends it and every process it started."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    run_dir: Path
    log_path: Path
    engine_settings: str = ""  # what the policy engine was given for this machine, in words
    agent_port: int = 0  # HAProxy's agent check (serving/agent_check.py); 0: none
    _known_pids: set[int] = field(default_factory=set)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    @property
    def known_pids(self) -> set[int]:
        """Every pid of the server's process tree seen so far, the server's own included."""
        return {*self._known_pids, self.process.pid}

    def _remember_tree(self) -> None:
        self._known_pids.update(p.pid for p in self.descendants())

    def metric_values(self, name: str) -> dict[str, float]:
        """Prometheus samples of one metric on the metrics port, keyed by their label text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {m.group(1) or "": float(m.group(2))
                for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", text, re.M)}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} before it was ready; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        self._remember_tree()
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            self._remember_tree()
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 90.0) -> None:
        """SIGTERM lets Triton unload the models (each shuts its engine down); whatever of the
        process tree is still alive after the grace period is killed by pid."""
        self._remember_tree()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            # Keep noting the tree while it winds down: an engine started during shutdown (a
            # restart racing the unload) must be known to be stopped.
            while self.process.poll() is None and time.monotonic() < deadline:
                self._remember_tree()
                time.sleep(0.2)
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        survivors = []
        for pid in self._known_pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    survivors.append(p)
            except psutil.NoSuchProcess:
                continue
        for p in survivors:
            p.kill()
        psutil.wait_procs(survivors, timeout=10)


def _replacement(value: str) -> Callable[[re.Match[str]], str]:
    """A `re.sub` replacement keeping the pattern's two groups around `value` (taken as is)."""
    return lambda m: m.group(1) + value + m.group(2)


def _set_parameters(config: Path, values: dict[str, str]) -> None:
    """Override `parameters` entries of a copied config.pbtxt (benchmarks compare settings)."""
    text = config.read_text()
    for key, value in values.items():
        pattern = re.compile(r'(\{ key: "' + re.escape(key) + r'", value: \{ string_value: ")[^"]*(" \} \})')
        if not pattern.search(text):
            raise KeyError(f"{config}: no parameter {key!r}")
        text = pattern.sub(_replacement(value), text)
    config.write_text(text)


def start_server(
    model_repository: Path = MODEL_REPOSITORY,
    policy_model: str | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    address: str = "127.0.0.1",
    extra_args: list[str] | None = None,
    run_dir: Path | None = None,
    engine_overrides: dict | None = None,
    dynasor_parameters: dict[str, str] | None = None,
    reward_settings: dict | None = None,
    agent_port: int = 0,
) -> TritonServer:
    """Start tritonserver on a copy of the model repository (so a chosen model, engine override or
    `reward` model.json, e.g. deploy/reward/*.json, never edits the checked-in files); returns
    before it is ready."""
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="dynasor-run-"))
    repo = run_dir / "model_repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(model_repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    if reward_settings is not None:
        (repo / "reward" / "1" / "model.json").write_text(json.dumps(reward_settings, indent=2))
    engine_settings = ""
    for name in VLLM_MODELS:
        model_json = repo / name / "1" / "model.json"
        if not model_json.exists():
            continue
        cfg = json.loads(model_json.read_text())
        if policy_model or engine_overrides:
            if policy_model:
                cfg["model"] = resolve_model(policy_model)
            cfg.update(engine_overrides or {})
            model_json.write_text(json.dumps(cfg, indent=2))
        if name == "policy":
            engine_settings = settings_for_this_machine(cfg).describe()
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    local = "127.0.0.1" if address in ("0.0.0.0", "127.0.0.1") else address
    if (repo / "dynasor" / "config.pbtxt").is_file():
        agent = {"agent_port": str(agent_port), "agent_address": address} if agent_port else {}
        _set_parameters(repo / "dynasor" / "config.pbtxt", {"policy_grpc_url": f"{local}:{grpc_port}", **agent, **(dynasor_parameters or {})})
    metrics_port = metrics_port or free_port()
    log_path = run_dir / "tritonserver.log"
    cmd = [
        str(_pytriton_dir() / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={_backend_dir(run_dir)}",
        f"--http-address={address}",
        f"--grpc-address={address}",
        f"--metrics-address={address}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        # The client id header reaches `dynasor` as a request parameter (max_programs_per_client).
        "--http-header-forward-pattern=dynasor-client-id",
        "--grpc-header-forward-pattern=dynasor-client-id",
        # Decoupled BLS calls each hold a backend thread while they stream (pitfall 9).
        "--backend-config=python,thread-pool-size=64",
        *(extra_args or []),
    ]
    log = open(log_path, "ab")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True, cwd=run_dir)
    log.close()
    return TritonServer(process, http_port, grpc_port, metrics_port, run_dir, log_path, engine_settings, agent_port)


@dataclass
class OpenAIFront:
    """The OpenAI-compatible front (frontends/openai_server.py) as a process of its own, beside a
    running server; `stop()` ends it by pid."""

    process: subprocess.Popen
    port: int
    host: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}/v1"

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the OpenAI front exited with code {self.process.returncode}; log {self.log_path}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the OpenAI front is not up after {timeout_s:.0f} s; log {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_openai_front(triton_grpc: str, port: int | None = None, host: str = "127.0.0.1", log_dir: Path | None = None) -> OpenAIFront:
    """Start the OpenAI front for the server at `triton_grpc` (host:port); returns before it is up."""
    port = port or free_port()
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="dynasor-openai-")) / "openai-front.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    log = open(log_path, "ab")
    process = subprocess.Popen([sys.executable, "-m", "frontends.openai_server", "--triton", triton_grpc, "--host", host, "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return OpenAIFront(process, port, host, log_path)
