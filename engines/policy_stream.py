"""How the Triton engines (gRPC and BLS) talk to `policy`: one builder of its inputs, one decoder
of its response tensors into SampleDeltas, and one drain that reads a blocking response stream on
a pool thread and hands plain items to the event loop. Written once so the two transports cannot
drift apart (the gRPC engine once dropped logprobs that the BLS engine read). Clients that call
`policy` for n samples themselves (the load test's baseline, the simulator, bench-live) collect
them with one accumulator and vote as the programs do."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from scheduler_backend.answers import majority_answer
from scheduler_backend.code_behaviour import code_problem, vote
from scheduler_backend.engine import GenerateCall, SampleDelta
from scheduler_backend.programs.base import sample_answer

T = TypeVar("T")

POLICY_OUTPUTS = ("text_output", "sample_index", "num_output_tokens", "finish_reason", "cumulative_logprob")


def policy_inputs(call: GenerateCall) -> dict[str, Any]:
    """The `policy` model's inputs for this call: sampling_parameters, messages or text_input,
    stream and priority."""
    s = call.sampling
    sampling: dict[str, Any] = {"n": s.n, "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
    if s.top_k:
        sampling["top_k"] = s.top_k
    if s.min_tokens:
        sampling["min_tokens"] = s.min_tokens
    if s.stop:
        sampling["stop"] = list(s.stop)
    if s.logprobs is not None:
        sampling["logprobs"] = s.logprobs
    inputs: dict[str, Any] = {"sampling_parameters": json.dumps(sampling)}
    if call.messages:
        inputs["messages"] = json.dumps([{"role": m.role, "content": m.content} for m in call.messages])
    else:
        inputs["text_input"] = call.prompt
    return {**inputs, "stream": True, "priority": call.priority}


def policy_outputs(call: GenerateCall) -> list[str]:
    """The output tensors a call reads: logprobs only when it asked for them."""
    return [*POLICY_OUTPUTS, *(["logprobs"] if call.sampling.logprobs is not None else [])]


def decode_deltas(outputs: Mapping[str, np.ndarray]) -> list[SampleDelta]:
    """SampleDeltas from one `policy` response's tensors by name; [] for a response without text
    (the empty final response)."""
    if outputs.get("text_output") is None:
        return []

    def flat(name: str) -> np.ndarray | None:
        value = outputs.get(name)
        return None if value is None else np.asarray(value).reshape(-1)

    texts = flat("text_output")
    index, tokens, finish = flat("sample_index"), flat("num_output_tokens"), flat("finish_reason")
    logprob, tops = flat("cumulative_logprob"), flat("logprobs")
    assert texts is not None and index is not None and tokens is not None
    deltas = []
    for i, text in enumerate(texts):
        reason = _text(finish[i]) if finish is not None else ""
        deltas.append(
            SampleDelta(
                index=int(index[i]),
                text=_text(text),
                num_tokens=int(tokens[i]),
                finished=bool(reason),
                finish_reason=reason or None,
                cumulative_logprob=None if logprob is None or np.isnan(logprob[i]) else float(logprob[i]),
                top_logprobs=json.loads(_text(tops[i])) if tops is not None else [],
            )
        )
    return deltas


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


_END = object()


async def drain(pool: Executor, produce: Callable[[], Iterable[T]]) -> AsyncIterator[T]:
    """Iterate `produce()` on a thread of `pool` and yield its items on the event loop; whatever
    it raises is raised here. The thread reads the stream to its end even when the consumer stops
    early, so the call stays known (and abortable) until the server ends it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def work() -> None:
        try:
            for item in produce():
                loop.call_soon_threadsafe(queue.put_nowait, (item, None))
        except Exception as e:  # handed to the awaiting coroutine, raised there
            loop.call_soon_threadsafe(queue.put_nowait, (None, e))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    pool.submit(work)
    while (entry := await queue.get()) is not _END:
        item, error = entry
        if error is not None:
            raise error
        yield item


@dataclass
class SampleAccumulator:
    """The baseline's n samples as they stream in: text, tokens and finish reason per sample, so
    the vote at the deadline counts only samples that finished."""

    texts: dict[int, str] = field(default_factory=dict)
    finish_reasons: dict[int, str | None] = field(default_factory=dict)
    tokens: int = 0

    def add(self, deltas: Iterable[SampleDelta]) -> None:
        for d in deltas:
            self.texts[d.index] = self.texts.get(d.index, "") + d.text
            self.tokens += d.num_tokens
            if d.finished:
                self.finish_reasons[d.index] = d.finish_reason

    @property
    def finished(self) -> int:
        return len(self.finish_reasons)

    def answers(self, answer_format: str = "auto") -> list[str | None]:
        """Each finished sample's answer, extracted as the programs extract theirs."""
        return [sample_answer(self.texts[i], self.finish_reasons[i], answer_format) for i in sorted(self.finish_reasons)]

    def answer(self, answer_format: str = "auto") -> str | None:
        """Majority answer of the finished samples."""
        return majority_answer(self.answers(answer_format))[0]

    def program_answer(self, question: str) -> str | None:
        """For a code question, as the `code` program answers: the finished samples' programs
        voted by behaviour in the sandbox, the first program of the largest cluster."""
        return vote([self.texts[i] for i in sorted(self.finish_reasons)], code_problem(question)).answer
