"""The one way the Triton engines call `policy`: inputs built, response tensors decoded, and a
blocking stream drained from a thread into the event loop."""
from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from engines.policy_stream import POLICY_OUTPUTS, decode_deltas, drain, policy_inputs, policy_outputs
from scheduler_backend.engine import ChatMessage, GenerateCall, SamplingSpec


def test_inputs_carry_sampling_messages_stream_and_priority() -> None:
    call = GenerateCall("r", SamplingSpec(max_tokens=8, n=2, stop=("\n",), logprobs=3, top_k=50),
                        messages=(ChatMessage("user", "hi"),), priority=-4)
    inputs = policy_inputs(call)
    assert json.loads(inputs["sampling_parameters"]) == {"n": 2, "max_tokens": 8, "temperature": 0.7, "top_p": 1.0,
                                                         "top_k": 50, "stop": ["\n"], "logprobs": 3}
    assert json.loads(inputs["messages"]) == [{"role": "user", "content": "hi"}]
    assert inputs["stream"] is True and inputs["priority"] == -4 and "text_input" not in inputs
    assert policy_outputs(call) == [*POLICY_OUTPUTS, "logprobs"]
    plain = GenerateCall("r", SamplingSpec(max_tokens=8), prompt="raw")
    assert policy_inputs(plain)["text_input"] == "raw" and "messages" not in policy_inputs(plain)
    assert policy_outputs(plain) == list(POLICY_OUTPUTS)


def test_decoding_reads_every_output_including_logprobs() -> None:
    outputs = {
        "text_output": np.array([b"foo", "b\xc3\xa9".encode("latin-1")], dtype=np.object_),
        "sample_index": np.array([1, 0], dtype=np.int32),
        "num_output_tokens": np.array([2, 1], dtype=np.uint32),
        "finish_reason": np.array([b"", b"stop"], dtype=np.object_),
        "cumulative_logprob": np.array([np.nan, -1.5], dtype=np.float32),
        "logprobs": np.array([json.dumps([{"a": -0.1}, {"b": -0.2}]).encode(), b"[]"], dtype=np.object_),
    }
    first, second = decode_deltas(outputs)
    assert (first.index, first.text, first.num_tokens, first.finished, first.finish_reason) == (1, "foo", 2, False, None)
    assert first.cumulative_logprob is None and first.top_logprobs == [{"a": -0.1}, {"b": -0.2}]
    assert (second.index, second.finished, second.finish_reason, second.cumulative_logprob) == (0, True, "stop", -1.5)
    assert decode_deltas({}) == [], "the empty final response carries no text"
    del outputs["logprobs"], outputs["cumulative_logprob"]
    assert all(d.top_logprobs == [] and d.cumulative_logprob is None for d in decode_deltas(outputs))


def test_drain_yields_in_order_and_raises_what_the_thread_raised() -> None:
    def produce():
        yield from (1, 2, 3)
        raise OSError("stream broke")

    async def go() -> list[int]:
        got = []
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(OSError, match="stream broke"):
                async for item in drain(pool, produce):
                    got.append(item)
        return got

    assert asyncio.run(go()) == [1, 2, 3]


def test_drain_reads_the_stream_to_its_end_when_the_consumer_stops_early() -> None:
    ended = threading.Event()

    def produce():
        try:
            yield from range(5)
        finally:
            ended.set()

    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            async for _ in drain(pool, produce):
                break
            await asyncio.get_running_loop().run_in_executor(None, ended.wait, 5)

    asyncio.run(go())
    assert ended.is_set()
