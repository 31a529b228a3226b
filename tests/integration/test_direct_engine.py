"""Self-consistency and the trace recorder through the direct vLLM engine (no Triton), on the
real small model: the path traces and benchmarks take."""
from __future__ import annotations

import asyncio
import os

import pytest

from scheduler_backend.registry import create
from scheduler_backend.runner import ProgramRunner
from scheduler_backend.scheduler import Scheduler
from scheduler_backend.traces import read_traces, record
from serving.model_config import policy_engine_args, reward_settings
from tests.conftest import TEST_MODEL
from tests.engine_contract import check_engine

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have now?"


def test_self_consistency_and_trace_recording_on_the_direct_vllm_engine(monkeypatch, tmp_path):
    from engines.vllm_direct import VllmEngine

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))  # pitfall 6

    async def go():
        async with VllmEngine(policy_engine_args(TEST_MODEL, enforce_eager=True), reward_settings()) as engine:
            runner = ProgramRunner(engine, Scheduler())
            program = create("self-consistency", QUESTION, {"budget": 4, "round_size": 2, "max_tokens": 64,
                                                             "answer_format": "number"})
            state = await runner.run("sc", program)
            options = {"budget": 4, "round_size": 2, "detect_step": 2, "max_tokens": 32}
            out = tmp_path / "traces.jsonl"
            written = await record(engine, "self-consistency", [{"id": "q0", "question": QUESTION, "gold": "8"}], options, out)
            again = await record(engine, "self-consistency", [{"id": "q0", "question": QUESTION, "gold": "8"}], options, out)
            return state, read_traces(out), written, again

    state, traces, written, again = asyncio.run(go())
    assert (written, again) == (1, 0), "a second recording into the same file resumes: nothing left to do"
    assert state.done and state.stop_reason.value in ("settled", "cap")
    assert state.answer is not None, "the number format always finds a number in SmolLM's text"
    assert 0.0 <= state.certaindex <= 1.0
    assert 2 <= state.steps <= 4 and state.tokens_used > 0
    (trace,) = traces
    assert [h["steps"] for h in trace["history"]] == [2, 4], "recording runs to the cap, one entry per round"
    assert trace["history"][-1]["tokens_used"] > trace["history"][0]["tokens_used"] > 0
    assert isinstance(trace["correct"], bool)
    assert len(trace["samples"]) == 4 and all(s["tokens"] > 0 for s in trace["samples"])
    assert sum(s["tokens"] for s in trace["samples"]) == trace["history"][-1]["tokens_used"]
    assert all("text" not in s for s in trace["samples"]), "traces keep no generated text"


def test_the_direct_vllm_engine_keeps_the_engine_contract(monkeypatch):
    from engines.vllm_direct import VllmEngine

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))  # pitfall 6

    async def go():
        async with VllmEngine(policy_engine_args(TEST_MODEL, enforce_eager=True), reward_settings()) as engine:
            await check_engine(engine, "direct")

    asyncio.run(go())
