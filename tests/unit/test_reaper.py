"""The reaper with real processes standing in for tritonserver, a stub and its engine: whichever of
server or stub dies (SIGKILL, no cleanup), the stub's whole tree is gone soon after."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
# A "stub" that starts its reaper first (as the models do), then an "engine" in its own session,
# then replaces that engine (a restart after an engine death), prints the pids and waits.
STUB = """
import subprocess, sys, time
from serving.reaper import start_reaper
reaper = start_reaper()
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
first = subprocess.Popen(sleeper, start_new_session=True)
time.sleep(1.0)
first.kill()
first.wait()
engine = subprocess.Popen(sleeper, start_new_session=True)
print(engine.pid, reaper.pid, flush=True)
time.sleep(600)
"""
# A "server" that starts the stub and passes on its pids.
SERVER = f"""
import subprocess, sys, time
stub = subprocess.Popen([sys.executable, "-c", {STUB!r}], cwd={str(ROOT)!r}, stdout=subprocess.PIPE, text=True)
print(stub.pid, stub.stdout.readline().strip(), flush=True)
stub.wait()
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


@pytest.mark.parametrize("victim", ["server", "stub"])
def test_killing_the_server_or_the_stub_takes_the_whole_stub_tree_with_it_rebuilt_engine_included(victim):
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        stub_pid, engine_pid, reaper_pid = (int(x) for x in server.stdout.readline().split())
        stub = psutil.Process(stub_pid)
        time.sleep(1.5)  # the reaper has noted the rebuilt engine
        (server.send_signal if victim == "server" else stub.send_signal)(signal.SIGKILL)
        survivors = _wait_gone([stub_pid, engine_pid, reaper_pid])
        assert not survivors, f"outlived the {victim}: {survivors}"
    finally:
        server.kill()
        server.wait()
