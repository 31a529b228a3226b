"""The scripted engine must behave like a real one where programs can tell, or program tests prove
nothing: streaming, stop strings, truncation, abort, failures and recording."""
from __future__ import annotations

import asyncio

import pytest

from engines.scripted import ScriptedEngine
from scheduler_backend.engine import EngineError, GenerateCall, SamplingSpec
from tests.engine_contract import check_engine


def _call(request_id: str = "r1", n: int = 1, max_tokens: int = 100, stop: tuple[str, ...] = (),
          priority: int = 0) -> GenerateCall:
    return GenerateCall(request_id, SamplingSpec(max_tokens=max_tokens, n=n, stop=stop), prompt="q", priority=priority)


async def _collect(engine: ScriptedEngine, call: GenerateCall) -> tuple[list, dict[int, dict]]:
    batches, samples = [], {}
    async for deltas in engine.generate(call):
        batches.append(deltas)
        for d in deltas:
            s = samples.setdefault(d.index, {"text": "", "tokens": 0, "finish": None})
            s["text"] += d.text
            s["tokens"] += d.num_tokens
            if d.finished:
                s["finish"] = d.finish_reason
    return batches, samples


def test_streams_each_sample_in_several_deltas_that_add_up():
    engine = ScriptedEngine(lambda call, i: f"sample {i} says  hello world \n", deltas_per_sample=3)
    batches, samples = asyncio.run(_collect(engine, _call(n=2)))
    assert len(batches) == 3
    assert samples[0] == {"text": "sample 0 says  hello world \n", "tokens": 5, "finish": "stop"}
    assert samples[1]["text"] == "sample 1 says  hello world \n"
    assert all(d.finished for d in batches[-1]) and not any(d.finished for d in batches[0])


def test_stop_string_cuts_the_text_and_is_not_returned():
    engine = ScriptedEngine(lambda call, i: "step one\n\nstep two")
    _, samples = asyncio.run(_collect(engine, _call(stop=("\n\n",))))
    assert samples[0] == {"text": "step one", "tokens": 2, "finish": "stop"}


def test_max_tokens_truncates_with_finish_reason_length():
    engine = ScriptedEngine(lambda call, i: "a b c d e f")
    _, samples = asyncio.run(_collect(engine, _call(max_tokens=4)))
    assert samples[0] == {"text": "a b c d", "tokens": 4, "finish": "length"}


def test_empty_text_still_finishes():
    engine = ScriptedEngine(lambda call, i: "")
    _, samples = asyncio.run(_collect(engine, _call()))
    assert samples[0] == {"text": "", "tokens": 0, "finish": "stop"}


def test_abort_ends_the_stream_and_is_recorded():
    engine = ScriptedEngine(lambda call, i: "w " * 30, delay_s=0.01, deltas_per_sample=10)

    async def scenario():
        seen = []

        async def consume():
            async for deltas in engine.generate(_call("victim")):
                seen.append(deltas)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.035)
        await engine.abort("victim")
        await asyncio.wait_for(task, 1.0)
        return seen

    seen = asyncio.run(scenario())
    assert 0 < len(seen) < 10
    assert not any(d.finished for batch in seen for d in batch)
    assert engine.aborted == ["victim"]


def test_fail_raises_engine_error_for_that_call_only():
    engine = ScriptedEngine(lambda call, i: "fine")
    engine.fail("bad")
    with pytest.raises(EngineError):
        asyncio.run(_collect(engine, _call("bad")))
    _, samples = asyncio.run(_collect(engine, _call("good")))
    assert samples[0]["text"] == "fine"


def test_records_calls_with_priority_and_the_script_sees_the_call():
    engine = ScriptedEngine(lambda call, i: f"{call.request_id}/{i}")
    _, samples = asyncio.run(_collect(engine, _call("a", n=2, priority=7)))
    asyncio.run(_collect(engine, _call("b", priority=-3)))
    assert [c.request_id for c in engine.calls] == ["a", "b"]
    assert [c.priority for c in engine.calls] == [7, -3]
    assert [samples[0]["text"], samples[1]["text"]] == ["a/0", "a/1"]


def test_scores_with_the_scorer_and_records_them():
    engine = ScriptedEngine(lambda call, i: "", scorer=lambda q, c: 0.9 if "good" in c else 0.1)
    scores = asyncio.run(engine.score("q?", ["good step", "bad step"]))
    assert scores == [0.9, 0.1]
    assert engine.score_calls == [("q?", ("good step", "bad step"))]
    assert asyncio.run(ScriptedEngine(lambda call, i: "").score("q", ["x"])) == [0.5]
    engine.fail_scores = True
    with pytest.raises(EngineError):
        asyncio.run(engine.score("q?", ["x"]))


def test_the_scripted_engine_keeps_the_engine_contract() -> None:
    engine = ScriptedEngine(lambda call, i: " ".join(f"w{k}" for k in range(40)), delay_s=0.001)
    asyncio.run(check_engine(engine))
    engine.shutdown()
    assert engine.closed
    assert engine.aborted == ["contract-abort"]
