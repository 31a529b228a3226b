"""What every Engine owes the runner, checked the same way on each: the scripted engine in the unit
tests, the direct vLLM, Triton gRPC and Triton BLS engines in the integration tests."""
from __future__ import annotations

import asyncio

from scheduler_backend.engine import ChatMessage, Engine, EngineError, GenerateCall, SampleDelta, SamplingSpec

PROMPT = (ChatMessage("user", "Count from one to twenty in words, separated by spaces."),)


async def _collect(engine: Engine, call: GenerateCall) -> list[SampleDelta]:
    return [d for deltas in [x async for x in engine.generate(call)] for d in deltas]


async def check_generate(engine: Engine, tag: str = "contract") -> None:
    """n samples stream as deltas; each sample index in range(n) finishes exactly once, last, with
    a reason; tokens add up; logprobs come per token when asked."""
    call = GenerateCall(f"{tag}-gen", SamplingSpec(max_tokens=12, temperature=0.8, n=2, logprobs=2), messages=PROMPT)
    deltas = await _collect(engine, call)
    assert {d.index for d in deltas} == {0, 1}
    for i in (0, 1):
        mine = [d for d in deltas if d.index == i]
        assert [d.finished for d in mine].count(True) == 1 and mine[-1].finished, f"sample {i}: one final delta, last"
        assert mine[-1].finish_reason in ("stop", "length")
        tokens = sum(d.num_tokens for d in mine)
        assert 0 < tokens <= 12
        assert sum(len(d.top_logprobs) for d in mine) == tokens, "one top-logprob map per generated token"
        assert all(isinstance(v, float) for d in mine for step in d.top_logprobs for v in step.values())


async def check_abort(engine: Engine, tag: str = "contract") -> None:
    """After `abort`, the call's stream ends (quietly or with EngineError) and the engine serves
    the next call."""
    call = GenerateCall(f"{tag}-abort", SamplingSpec(max_tokens=200, temperature=0.8), messages=PROMPT)
    stream = engine.generate(call)

    async def rest() -> None:
        async for _ in stream:
            pass

    await stream.__anext__()
    await engine.abort(call.request_id)
    try:
        await asyncio.wait_for(rest(), timeout=30)
    except EngineError:
        pass
    after = await _collect(engine, GenerateCall(f"{tag}-after", SamplingSpec(max_tokens=4), messages=PROMPT))
    assert any(d.finished for d in after)


async def check_score(engine: Engine) -> None:
    """One score in [0, 1] per candidate, in order."""
    scores = await engine.score("What is 2 + 3?", ["2 + 3 = 5", "2 + 3 = 7", "The answer is 5."])
    assert len(scores) == 3
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)


async def check_engine(engine: Engine, tag: str = "contract") -> None:
    """The whole contract; the caller shuts the engine down afterwards."""
    await check_generate(engine, tag)
    await check_abort(engine, tag)
    await check_score(engine)
