"""`python -m benchmarks.bench_sandbox`: the code sandbox against hostile programs, as a table: what
each sample reported, how long its run took, and whether anything it started was left running.
tests/unit/test_sandbox.py asserts the same programs' outcomes."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from engines.engine_settings import cpu_model
from scheduler_backend.sandbox import Limits, RunResult, Sandbox

# name: (prelude, body of f(x), the outcome a contained run reports; None: the run itself fails)
HOSTILE: dict[str, tuple[str, str, list[str] | None]] = {
    "infinite loop": ("", "while True:\n    pass", ["!Timeout"]),
    "fork bomb": ("import os", "while True:\n    os.fork()", None),
    "10 GB allocation": ("", "return len(bytearray(10 * 1024 ** 3))", ["!MemoryError"]),
    "write outside its folder": ("", "open('/usr/lib/dynasor-evil', 'w').write('x')\nreturn 1", ["!OSError"]),
    "read the server's files": ("", f"return open({str(Path(__file__).resolve())!r}).read()", ["!FileNotFoundError"]),
    "read the server's environment": ("import os", "return os.environ.get('DYNASOR_SECRET', 'not seen')", ["='not seen'"]),
    "open a socket": ("import socket", "socket.create_connection(('1.1.1.1', 80), timeout=1)\nreturn 1", ["!OSError"]),
    "kill its parent": ("import os", "os.kill(os.getppid(), 9)\nreturn 'alive'", ["='alive'"]),
    "print gigabytes": ("import sys", "while True:\n    sys.stdout.write('x' * 65536)", ["!OSError"]),
    "C-extension crash": ("import ctypes", "return ctypes.string_at(0)", None),
}


def source_of(prelude: str, body: str) -> str:
    return f"{prelude}\ndef f(x):\n" + "\n".join("    " + line for line in body.splitlines())


def run_hostile(box: Sandbox, name: str) -> RunResult:
    prelude, body, _ = HOSTILE[name]
    return box.run({"source": source_of(prelude, body), "entry_point": "f", "calls": ["f(1)"]})


def processes_of(box: Sandbox) -> list[int]:
    """Processes running as one of the sandbox's user ids (its runs'; nothing else uses them)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if uid in box.uids and uid != os.getuid():
            pids.append(int(status.parent.name))
    return pids


def main() -> int:
    box = Sandbox(Limits(cpu_s=4, wall_s=6.0, memory_mb=512, processes=16, output_bytes=1 << 16, call_s=2.0))
    os.environ["DYNASOR_SECRET"] = "set in the server's environment"
    print(f"isolation: {box.isolation}{' (' + box.warning + ')' if box.warning else ''}; uid {os.getuid()}; {cpu_model()}\n")
    print("| hostile program | sample's outcome | run failure | seconds | left running | contained |")
    print("|---|---|---|---:|---:|---|")
    for name, (_, _, expected) in HOSTILE.items():
        start = time.monotonic()
        run = run_hostile(box, name)
        seconds = time.monotonic() - start
        outcomes = (run.result or {}).get("outcomes")
        left = len(processes_of(box))
        contained = (outcomes == expected if expected is not None else outcomes is None or all(o.startswith("!") for o in outcomes))
        print(f"| {name} | {outcomes} | {run.failure or '-'} | {seconds:.2f} | {left} | {'yes' if contained and not left else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
