"""The code sandbox against hostile programs: each is contained, reported as that sample's failure
(no behaviour, or a failing outcome), leaves nothing running, and the next program runs normally.
Real bubblewrap and the system Python: the set-up installs them (scripts/setup.sh)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks.bench_sandbox import HOSTILE, processes_of, run_hostile, source_of
from scheduler_backend.code_behaviour import code_problem, fingerprint
from scheduler_backend.sandbox import Limits, Sandbox

SECRET = "dynasor-test-secret-7f3a"
LIMITS = Limits(cpu_s=4, wall_s=6.0, memory_mb=512, processes=16, output_bytes=1 << 16, call_s=2.0)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(LIMITS, max_parallel=2)
    assert box.isolation == "bubblewrap", box.warning  # the set-up installs it: the fallback is not what we test
    return box


def _run(box: Sandbox, body: str, prelude: str = "") -> tuple[list[str] | None, str]:
    run = box.run({"source": source_of(prelude, body), "entry_point": "f", "calls": ["f(1)"]})
    return (run.result or {}).get("outcomes"), run.failure


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_program_is_contained_and_reported_as_its_failure(sandbox: Sandbox, name: str) -> None:
    os.environ["DYNASOR_SECRET"] = SECRET
    try:
        started = time.monotonic()
        run = run_hostile(sandbox, name)
    finally:
        del os.environ["DYNASOR_SECRET"]
    outcomes, failure, expected = (run.result or {}).get("outcomes"), run.failure, HOSTILE[name][2]
    assert time.monotonic() - started < LIMITS.wall_s + 5
    if expected is None:
        assert outcomes is None or all(o.startswith("!") for o in outcomes), (outcomes, failure)
        assert failure or outcomes, "the run reports how it failed"
    else:
        assert outcomes == expected, (outcomes, failure)
    assert not Path("/usr/lib/dynasor-evil").exists()
    assert processes_of(sandbox) == [], "the run left processes behind"
    assert _run(sandbox, "return x + 1") == (["=2"], ""), "the next program runs normally"


def test_it_sees_neither_the_environment_nor_the_host_tree_and_is_not_the_servers_user(sandbox: Sandbox) -> None:
    os.environ["DYNASOR_SECRET"] = SECRET
    try:
        outcomes, _ = _run(sandbox, "return (sorted(os.environ.items()), sorted(os.listdir('/')), os.getuid())", "import os")
    finally:
        del os.environ["DYNASOR_SECRET"]
    assert outcomes is not None and SECRET not in outcomes[0]
    assert "'root'" not in outcomes[0] and "'work'" in outcomes[0]  # the private folder, not the host's /root
    if os.geteuid() == 0:
        assert ",0)" not in outcomes[0], "model code never runs as root"


def test_killing_its_parent_kills_only_itself(sandbox: Sandbox) -> None:
    outcomes, failure = _run(sandbox, "os.kill(os.getppid(), 9)\nos.kill(1, 9)\nreturn 'alive'", "import os")
    assert outcomes in (None, ["='alive'"], ["!PermissionError"]), (outcomes, failure)
    assert processes_of(sandbox) == []
    assert _run(sandbox, "return x * 3") == (["=3"], "")


def test_a_daemon_that_leaves_its_session_is_killed_with_the_run(sandbox: Sandbox) -> None:
    body = "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nreturn 'parent'"
    outcomes, _ = _run(sandbox, body, "import os, time")
    assert outcomes == ["='parent'"]
    assert processes_of(sandbox) == []


def test_runs_in_parallel_do_not_share_their_process_limit(sandbox: Sandbox) -> None:
    bomb = {"source": "import os\ndef f(x):\n    while True:\n        os.fork()", "entry_point": "f", "calls": ["f(1)"]}
    fine = {"source": "def f(x):\n    return x", "entry_point": "f", "calls": ["f(5)"]}
    runs = sandbox.run_many([bomb, fine, fine])
    assert [r.result for r in runs[1:]] == [{"defined": True, "error": "", "outcomes": ["=5"]}] * 2


def test_without_bubblewrap_the_fallback_says_so_and_still_limits() -> None:
    box = Sandbox(LIMITS, use_bwrap=False)
    assert box.isolation == "rlimits" and "no network or filesystem isolation" in box.warning
    outcomes, _ = _run(box, "return len(bytearray(10 * 1024 ** 3))")
    assert outcomes == ["!MemoryError"]
    outcomes, failure = _run(box, "while True:\n    pass")
    assert outcomes == ["!Timeout"]
    assert processes_of(box) == []


def test_behaviour_fingerprints_group_programs_by_what_they_do(sandbox: Sandbox) -> None:
    question = 'def double(x: int) -> int:\n    """Twice x.\n    >>> double(2)\n    4\n    """\n'
    problem = code_problem(question)
    assert problem.calls[0] == "double(2)" and len(problem.calls) > 1  # the docstring's, then from the hint
    sources = [question + "\n\ndef double(x):\n    return 2 * x\n", question + "\n\ndef double(x):\n    return x + x\n",
               question + "\n\ndef double(x):\n    return x * x\n", "def other(x):\n    return x\n"]
    prints = [fingerprint(sandbox.run({"source": s, "entry_point": "double", "calls": list(problem.calls)}))
              for s in sources]
    assert prints[0] == prints[1] != prints[2]
    assert prints[3] is None  # defines no `double`: no answer
