"""The Locust load test end to end on the session's server: a few seconds of open-loop arrivals of
tiny programs from all three user classes, Locust's CSV and the SLO summary checked."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler_backend.datasets import is_correct, load

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"DynasorGrpcUser": "dynasor-grpc", "DynasorHttpUser": "dynasor-http", "BaselineUser": "baseline"}


def run_locust(server, tmp_path, users: int, seconds: int, rate: str, *args: str, timeout_s: int = 60):
    """A headless Locust run of loadtest/locustfile.py against the session's server (tiny programs:
    budget 2, rounds of 2), its summary and records in `tmp_path`; the finished process."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtest" / "locustfile.py"), "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--grpc-url", server.grpc_url, "--http-url", server.http_url,
        "--program-rate", rate, "--slo-scale", "1", "--budget", "2", "--dynasor-options", '{"round_size": 2}',
        "--exit-code-on-error", "0", "--summary-json", str(tmp_path / "summary.json"),
        "--records-json", str(tmp_path / "records.jsonl"), *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_locust_headless_run_writes_stats_and_an_slo_summary(server, tmp_path):
    summary_path = tmp_path / "summary.json"
    done = run_locust(server, tmp_path, 3, 8, "1.0", "--base-deadline-s", "15", "--max-tokens", "32", "--seed", "3",
                      "--floor", "2", "--csv", str(tmp_path / "load"), *CLASSES)

    with open(tmp_path / "load_stats.csv") as f:
        rows = {row["Type"]: row for row in csv.DictReader(f) if row["Type"]}
    for request_type in CLASSES.values():
        assert request_type in rows, (rows.keys(), done.stderr[-2000:])
        assert int(rows[request_type]["Request Count"]) > 0

    summary = json.loads(summary_path.read_text())
    assert set(summary["classes"]) == set(CLASSES)
    assert summary["settings"]["program_rate"] == 1.0 and summary["duration_s"] > 0
    for name, s in summary["classes"].items():
        assert s["programs"] > 0, name
        assert 0.0 <= s["attainment"] <= 1.0 and 0.0 <= s["accuracy"] <= 1.0, (name, s)
        assert s["p50_latency_s"] <= s["p99_latency_s"], (name, s)
        assert s["errors"] < s["programs"], f"{name}: every program failed: {done.stderr[-2000:]}"
        assert s["floor"] == 2 and 0.0 <= s["attainment_at_floor"] <= s["attainment"], (name, s)
        assert s["below_floor"] == round((s["attainment"] - s["attainment_at_floor"]) * s["programs"]), (name, s)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == sum(s["programs"] for s in summary["classes"].values())
    served = [r for r in records if r["user_class"] != "BaselineUser" and not r["error"]]
    assert served and all(r["stop_reason"] and r["question_id"] for r in served), served[:3]
    # The server's wall-clock stamps fall inside the client's: received after it was sent, sent back
    # before the client saw it end, and the runner's own latency within that.
    for r in (r for r in served if r["ended"]):
        s = r["server"]
        assert r["started_at"] <= s["received_at"] <= s["sent_at"] <= r["ended_at"] + 0.01, r
        assert 0 < s["latency_s"] <= s["sent_at"] - s["received_at"] + 0.01, r
    assert all(r["server"] is None for r in records if r["user_class"] == "BaselineUser")
    assert all(r["steps"] <= 2 for r in records), "budget 2: no program votes over more samples"
    served_quality = [r["server"]["quality"] for r in served if r["ended"]]
    assert served_quality and all(q["floor"] == 2 for q in served_quality), "the floor reached the server"


def test_locust_runs_code_programs_and_a_code_baseline_graded_by_hidden_tests(server, tmp_path):
    """`--dataset humaneval --program code`: the server runs `code` programs, the baseline votes its
    samples' programs by behaviour in the client, and every answer given is a program (SmolLM2
    rarely passes the tests: the grading itself is what runs)."""
    records_path = tmp_path / "records.jsonl"
    done = run_locust(server, tmp_path, 2, 6, "0.5", "--base-deadline-s", "20", "--max-tokens", "64", "--dataset", "humaneval",
                      "--program", "code", "--seed", "5", "DynasorGrpcUser", "BaselineUser", timeout_s=90)
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert {r["user_class"] for r in records} == {"DynasorGrpcUser", "BaselineUser"}, done.stderr[-2000:]
    assert all(r["question_id"].startswith("HumanEval/") for r in records)
    answered = [r for r in records if r["answer"]]
    assert all("def " in r["answer"] for r in answered), answered[:2]
    assert not [r for r in records if r["user_class"] == "DynasorGrpcUser" and r["error"]], records
    # graded at test stop, at rest: what grading them again now gives (hidden tests under a time limit)
    problems = {p.id: p for p in load("humaneval", "test")}
    assert all(r["correct"] == is_correct(problems[r["question_id"]], r["answer"]) for r in records)
