"""Running model-written code without trusting it: each run is a fresh process tree in bubblewrap
(no network, no other processes, its own private writable directory, the system's `/usr` read-only
and nothing else of the host), as an unprivileged user id of its own when the server runs as root,
under CPU-time, address-space, process-count and file-size limits and a wall-clock limit, after
which everything it started is killed (its PID namespace ends with it).

Where bubblewrap cannot run, code still runs in a child process as that user id (when root) with
the same limits, in a new session that is killed as a group: the weaker fallback, which does not
hide the network or the host's readable files. `Sandbox.isolation` says which one is in force and
`Sandbox.warning` why, so the server can log it.

What it does not protect against: kernel exploits (bubblewrap is namespaces and seccomp-free
process isolation, not a VM), CPU and memory pressure on the host within the limits, and a program
that forges its own report (the report describes behaviour for the vote; it is not a security claim).
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HARNESS = Path(__file__).with_name("sandbox_harness.py")
# The interpreter model code runs under: the distribution's, readable by any user, stdlib only.
SYSTEM_PYTHON = "/usr/bin/python3"
# The run's first process, under the system Python: it takes the run's limits and user id itself
# (so the server never forks with Python code to run in the child: a fork from a process with gRPC
# threads, as the server's stub is, can break its streams, docs/PLATFORM.md pitfall 27), becomes a
# child subreaper (bwrap's PID-namespace init can outlive bwrap as a zombie, and a host whose PID 1
# reaps nothing would keep it), runs the command, reaps whatever was left to it and exits with the
# command's status. argv: limits as JSON, then the command.
_LAUNCHER = """
import ctypes, json, os, resource, sys
limits = json.loads(sys.argv[1])
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] << 20,) * 2)
resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"],) * 2)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if limits["uid"] is not None:
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    os.setgroups([])
    os.setgid(limits["uid"])
    os.setuid(limits["uid"])
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
status = os.waitpid(pid, 0)[1]
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""
# As root, after a run: every process left under the run's uid is killed by a process of that uid.
_KILL_UID = "import os, signal, sys; uid = int(sys.argv[1]); os.setgroups([]); os.setgid(uid); os.setuid(uid); os.kill(-1, signal.SIGKILL)"
UID_BASE = 61000  # each concurrent run gets its own uid from here, so process limits do not collide
UID_RANGE = 1000
UID_LOCKS = Path("/run/dynasor-sandbox-uids" if os.access("/run", os.W_OK) else "/tmp/dynasor-sandbox-uids")


@dataclass(frozen=True)
class Limits:
    """What one run may use. `cpu_s` is CPU time, `wall_s` real time for the whole run."""

    cpu_s: int = 10
    wall_s: float = 15.0
    memory_mb: int = 1024
    processes: int = 32
    output_bytes: int = 1 << 20  # any file it writes, its stdout and stderr included
    call_s: float = 1.0  # each probe call, inside the run (a request may give its own, as the tests do)


@dataclass(frozen=True)
class RunResult:
    """How a run ended: `result` is the harness's report (None when it never wrote one), `failure`
    says why not ("timeout", "killed by signal 11", "exit 1", ...); `stdout_tail` helps debugging."""

    result: dict[str, Any] | None
    failure: str
    stdout_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None


def _bwrap_usable(bwrap: str | None) -> str:
    """"" when bubblewrap runs a trivial command here, else why not."""
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed; `apt-get install bubblewrap` (scripts/setup.sh does, as root)"
    try:
        probe = subprocess.run([bwrap, "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
                                "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin", "/usr/bin/true"],
                               capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap could not start: {e}"
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()[:200]}"
    return ""


class Sandbox:
    """Runs the harness on one program at a time per call; `run_many` runs several at once."""

    def __init__(self, limits: Limits = Limits(), python: str = SYSTEM_PYTHON, max_parallel: int = 4,
                 use_bwrap: bool | None = None):
        self.limits = limits
        self.python = python
        bwrap = shutil.which("bwrap")
        why_not = _bwrap_usable(bwrap) if use_bwrap is not False else "bubblewrap turned off"
        self.bwrap = bwrap if not why_not else None
        self.as_root = os.geteuid() == 0
        self.isolation = "bubblewrap" if self.bwrap else "rlimits"
        self.warning = "" if self.bwrap else (
            f"code sandbox: {why_not}. Falling back to limits only: no network or filesystem isolation")
        if not Path(python).exists():
            raise RuntimeError(f"code sandbox: {python} not found; `apt-get install python3-minimal`")
        if not self.as_root:
            self.warning = "; ".join(filter(None, [self.warning, "code sandbox: not root, so model code runs as the "
                                                   "server's user and its process count is not limited"]))
        self._harness = HARNESS.read_bytes()
        self._uid_locks: list[Any] = []
        self._slots: queue.Queue[int] = queue.Queue()
        self.uids = self._claim_uids(max_parallel)  # the user ids its runs take turns with
        for uid in self.uids:
            self._slots.put(uid)
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="sandbox")

    def _claim_uids(self, count: int) -> list[int]:
        """As root, `count` user ids no other sandbox on this host holds (a lock file each, held
        while this sandbox lives), so that no two runs share a process limit or get killed
        together; otherwise the server's own uid."""
        if not self.as_root:
            return [os.getuid()] * count
        folder = UID_LOCKS  # one folder for the host, whatever TMPDIR each server or test has
        folder.mkdir(mode=0o700, exist_ok=True)
        claimed: list[int] = []
        for uid in range(UID_BASE, UID_BASE + UID_RANGE):
            handle = open(folder / f"{uid}.lock", "w")  # noqa: SIM115 - held open: the lock lives with it
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self._uid_locks.append(handle)
            claimed.append(uid)
            if len(claimed) == count:
                return claimed
        raise RuntimeError(f"code sandbox: all {UID_RANGE} sandbox user ids from {UID_BASE} are held by other sandboxes")

    def run(self, request: dict[str, Any]) -> RunResult:
        """Run the harness on `request` (see sandbox_harness.py) and return what it reported."""
        uid = self._slots.get()  # waits while `max_parallel` runs are out
        try:
            return self._run(request, uid)
        finally:
            self._slots.put(uid)

    def run_many(self, requests: Sequence[dict[str, Any]]) -> list[RunResult]:
        return list(self._pool.map(self.run, requests))

    def _command(self, workdir: Path, harness: Path) -> list[str]:
        inner = [self.python, "-I", "-S", "-B", "/sandbox/harness.py" if self.bwrap else str(harness)]
        if not self.bwrap:
            return inner
        return [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
                "--bind", str(workdir), "/work", "--ro-bind", str(harness), "/sandbox/harness.py",
                "--chdir", "/work", "--setenv", "HOME", "/work", "--setenv", "TMPDIR", "/work",
                "--setenv", "PATH", "/usr/bin", "--setenv", "PYTHONHASHSEED", "0", "--", *inner]

    def _launch(self, uid: int, command: list[str]) -> list[str]:
        """`command` under the launcher, with the run's limits and, as root, its own uid."""
        limits = {"cpu_s": self.limits.cpu_s, "memory_mb": self.limits.memory_mb, "output_bytes": self.limits.output_bytes,
                  "processes": self.limits.processes, "uid": uid if self.as_root else None}
        return [self.python, "-I", "-S", "-c", _LAUNCHER, json.dumps(limits), *command]

    def _kill_uid(self, uid: int) -> None:
        """As root: whatever still runs under the run's uid (a daemon that left its session in the
        fallback) is killed by a process of that uid."""
        subprocess.run([self.python, "-I", "-S", "-c", _KILL_UID, str(uid)], check=False, timeout=30, capture_output=True)

    def _run(self, request: dict[str, Any], uid: int) -> RunResult:
        request = {"call_s": self.limits.call_s, **request}
        with tempfile.TemporaryDirectory(prefix="dynasor-sandbox-") as tmp:
            os.chmod(tmp, 0o711)  # the run's uid passes through to its own folder, nothing else
            workdir = Path(tmp) / "work"
            workdir.mkdir()
            harness = Path(tmp) / "harness.py"  # a copy: the project's folder may be closed to the uid
            harness.write_bytes(self._harness)
            harness.chmod(0o644)
            if self.as_root:
                os.chown(workdir, uid, uid)
            stdout = Path(tmp) / "stdout"
            result_path = workdir / ".result"
            env = {"PATH": "/usr/bin", "PYTHONHASHSEED": "0", "HOME": str(workdir), "TMPDIR": str(workdir),
                   "DYNASOR_RESULT": "/work/.result" if self.bwrap else str(result_path)}
            with open(stdout, "wb") as out:
                proc = subprocess.Popen(self._launch(uid, self._command(workdir, harness)), stdin=subprocess.PIPE, stdout=out,
                                        stderr=out, cwd=workdir, env=env, close_fds=True, start_new_session=True)
                failure = ""
                try:
                    proc.communicate(json.dumps(request).encode(), timeout=self.limits.wall_s)
                except subprocess.TimeoutExpired:
                    failure = "timeout"
                except BrokenPipeError:
                    pass
                finally:
                    _kill_group(proc)
                    if self.as_root:
                        self._kill_uid(uid)
            code = proc.returncode
            signum = -code if code < 0 else code - 128 if code > 128 else 0  # bwrap reports 128 + signal
            if not failure and code:
                failure = {int(signal.SIGXCPU): "cpu time limit", int(signal.SIGXFSZ): "output size limit"}.get(
                    signum, f"killed by signal {signum}" if signum else f"exit {code}")
            tail = stdout.read_bytes()[-2000:].decode(errors="replace") if stdout.exists() else ""
            result = None
            try:
                result = json.loads(result_path.read_text()) if result_path.is_file() else None
            except (OSError, ValueError):
                failure = failure or "unreadable result"
            if result is None and not failure:
                failure = "no result"
            return RunResult(result if isinstance(result, dict) else None, failure, tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the run's session: bwrap (whose PID namespace dies with it) or, in the fallback, every
    process the code started that stayed in its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process's shared sandbox, made on first use (it probes bubblewrap once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
        return _default
