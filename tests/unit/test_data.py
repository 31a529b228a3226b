"""The repository carries what it needs: the benchmark data (checked against data/SOURCES.md) and
no path outside itself, so a user's clone with no sibling folders runs as this one does."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler_backend.datasets import DATA_DIR, DATASETS, is_correct, load

REPO = Path(__file__).resolve().parents[2]


def test_every_data_file_matches_its_checksum_in_sources():
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (DATA_DIR / "SOURCES.md").read_text(), re.MULTILINE)
    assert len(listed) == 6
    for digest, name in listed:
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name
        assert (DATA_DIR / name).parent.joinpath("LICENSE").is_file(), f"{name} has no license beside it"


def test_every_set_loads_with_answers_that_grade():
    sizes = {name: len(load(name)) for name in DATASETS}
    assert sizes == {"gsm8k": 1319, "math500": 500, "aime24": 30, "game24": 100, "grade-school": 200, "arithmetic": 200,
                     "humaneval": 164}
    assert load("gsm8k")[0].gold == "18" and load("aime24")[0].gold == "204"
    for name in ("gsm8k", "math500", "aime24", "grade-school", "arithmetic"):
        problem = load(name, limit=1)[0]
        assert is_correct(problem, problem.gold) and not is_correct(problem, "-12345")
    with pytest.raises(ValueError, match="split"):
        load("math500", "train")


def test_arithmetic_levels_grow_from_easy_to_impossible_with_exact_answers():
    problems = load("arithmetic")
    assert {p.level for p in problems} == set(range(1, 9))
    for p in problems[:16]:
        assert p.gold == str(eval(p.question.removeprefix("What is ").removesuffix("?")))  # exact big integers
    lengths = {level: max(len(p.question) for p in problems if p.level == level) for level in (1, 8)}
    assert lengths[8] > 3 * lengths[1]
    assert [p.question for p in load("arithmetic", "train")[:8]] != [p.question for p in problems[:8]]


def test_game24_answers_are_checked_as_expressions():
    problem = load("game24", limit=1)[0]
    assert problem.numbers == (4, 5, 6, 10)
    assert is_correct(problem, "(5 - 4) * 6 * ... ") is False
    assert is_correct(problem, "10 * 6 / 5 * 4 / 2") is False, "uses a number not in the puzzle"
    assert is_correct(problem, "(10 - 6) * 5 + 4") is True
    assert is_correct(problem, "(10 - 6) \\times 5 + 4 = 24") is True
    assert is_correct(problem, "4 * 6") is False, "must use all four numbers"


def test_no_tracked_file_reaches_outside_the_repository():
    hits = subprocess.run(["git", "grep", "-n", "-I", "-E", r"\.\./shared|parents\[2\]\.parent|REPO_ROOT\.parent",
                           "--", "*.py", "*.sh", "*.toml", "*.pbtxt", "Makefile", ".ci", "README.md"],
                          cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    assert [h for h in hits if "tests/unit/test_data.py" not in h] == []


def test_a_copy_with_no_sibling_folders_passes_the_data_and_answer_tests(tmp_path):
    """The suite's data comes from inside the repository: the working tree copied alone, with
    nothing beside it, still passes."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    lone = tmp_path / "only" / "repo"
    for name in files:
        if (REPO / name).is_file():
            (lone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, lone / name)
    assert sorted(p.name for p in lone.parent.iterdir()) == ["repo"]
    env = {**os.environ, "PYTHONPATH": str(lone)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_answers.py",
                           "tests/unit/test_data.py", "-k", "not copy_with_no_sibling and not reaches_outside"],
                          cwd=lone, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
