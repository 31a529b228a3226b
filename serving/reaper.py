"""`python -m serving.reaper --stub PID --server PID`: one per Python-backend stub, started by the
model at load. It notes the stub's process tree (vLLM's EngineCore and workers, first or rebuilt,
the answer checker's worker) every half second; when the stub or `tritonserver` dies, however it
died, it kills the stub and everything it noted, by pid, then exits. A SIGKILLed server runs no
cleanup of its own, and its grandchildren would otherwise live on under init holding gigabytes."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

POLL_S = 0.5


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(processes: list[psutil.Process]) -> None:
    """Kill each one still alive as the same process (psutil checks the start time: no pid reuse)."""
    for p in processes:
        try:
            if p.is_running():
                p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=5)


def watch(stub_pid: int, server_pid: int) -> None:
    """Block until the stub or the server is gone, then kill the stub's tree as last seen."""
    stub = psutil.Process(stub_pid)
    try:
        server: psutil.Process | None = psutil.Process(server_pid)
    except psutil.NoSuchProcess:
        server = None
    tree: dict[int, psutil.Process] = {}
    while server is not None and _alive(stub) and _alive(server):
        try:
            for child in stub.children(recursive=True):
                if child.pid != os.getpid():  # the reaper is the stub's child too
                    tree.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    _kill([stub, *tree.values()])


def start_reaper() -> subprocess.Popen[bytes]:
    """Start the reaper for the calling stub (whose parent is tritonserver), in its own session so
    that a kill of the server's process group leaves it to clean up."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-m", "serving.reaper", "--stub", str(os.getpid()), "--server", str(os.getppid())],
        cwd=root, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.reaper", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--stub", type=int, required=True)
    ap.add_argument("--server", type=int, required=True)
    args = ap.parse_args(argv)
    try:
        watch(args.stub, args.server)
    except psutil.NoSuchProcess:  # one of them was gone before we looked: nothing of it to note
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
