"""The Engine over an in-process vLLM AsyncLLM: for trace recording, benchmarks and tests that
drive programs without Triton. Callers pass the engine arguments and judge settings the `policy`
and `reward` models serve with (serving/model_config.py reads them), so both paths run the same
engine; scores come from the same generative judge (P(yes) from the first token's logprobs).

vLLM spawns its engine process: scripts that build one need an `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from engines.engine_settings import settings_for_this_machine
from engines.vllm_text import render_chat, top_logprobs
from scheduler_backend.engine import ChatMessage, EngineError, GenerateCall, SampleDelta, SamplingSpec
from scheduler_backend.judge import judge_score


class VllmEngine:
    """`async with VllmEngine(engine_args, judge) as engine:` starts vLLM and shuts it down on exit."""

    def __init__(self, engine_args: Mapping[str, Any], judge: Mapping[str, Any]):
        self.engine_args = dict(engine_args)
        self.judge = dict(judge)
        self._llm: Any = None
        self.tokenizer: Any = None

    async def __aenter__(self) -> VllmEngine:
        import os

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        settings = settings_for_this_machine(self.engine_args)
        os.environ.update(settings.env)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings.engine_args))
        self.tokenizer = self._llm.get_tokenizer()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def _params(self, spec: SamplingSpec) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(n=spec.n, max_tokens=spec.max_tokens, temperature=spec.temperature, top_p=spec.top_p,
                              top_k=spec.top_k, min_tokens=spec.min_tokens,
                              stop=list(spec.stop) or None, logprobs=spec.logprobs, output_kind=RequestOutputKind.DELTA)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        from vllm.v1.engine.exceptions import EngineDeadError

        messages = [{"role": m.role, "content": m.content} for m in call.messages]
        prompt = render_chat(self.tokenizer, messages) if messages else call.prompt
        try:
            async for out in self._llm.generate(prompt, self._params(call.sampling), call.request_id, priority=call.priority):
                yield [
                    SampleDelta(
                        index=c.index,
                        text=c.text,
                        num_tokens=len(c.token_ids),
                        finished=c.finish_reason is not None,
                        finish_reason=c.finish_reason,
                        cumulative_logprob=c.cumulative_logprob,
                        top_logprobs=top_logprobs(c),
                    )
                    for c in out.outputs
                ]
        except EngineDeadError as e:
            raise EngineError(f"vLLM engine died: {e}") from e

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        async def one(i: int, candidate: str) -> float:
            prompt = self.judge["prompt"].format(question=question, candidate=candidate)
            call = GenerateCall(request_id=f"judge-{id(candidates)}-{i}", sampling=SamplingSpec(max_tokens=1, temperature=0.0, logprobs=20),
                                messages=(ChatMessage("user", prompt),))
            top: dict[str, float] = {}
            async for deltas in self.generate(call):
                for d in deltas:
                    top = d.top_logprobs[0] if d.top_logprobs else top
            return judge_score(top, self.judge["yes_tokens"], self.judge["no_tokens"])

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(candidates))))
