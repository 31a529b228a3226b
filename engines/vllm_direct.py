"""The Engine over an in-process vLLM AsyncLLM: for trace recording, benchmarks and tests that
drive programs without Triton. Callers pass the engine arguments and reward settings the `policy`
and `reward` models serve with (serving/model_config.py reads them), so both paths run the same
engines; scores come from the same generative judge (P(yes) from the first token's logprobs) or,
in `prm` / `orm` mode, from the same reward model on a second, pooling engine (engines/vllm_reward.py).

vLLM spawns its engine process: scripts that build one need an `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from engines.engine_settings import settings_for_this_machine
from engines.vllm_reward import PoolingReward, load_tokenizer, pooling_engine_args
from engines.vllm_text import render_chat, top_logprobs
from scheduler_backend.engine import ChatMessage, EngineError, GenerateCall, SampleDelta, SamplingSpec
from scheduler_backend.judge import judge_score
from scheduler_backend.reward_steps import check_settings


def start_engine(engine_args: Mapping[str, Any]) -> Any:
    """An AsyncLLM with this machine's settings (engines/engine_settings.py), as the served models start theirs."""
    import os

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    settings = settings_for_this_machine(dict(engine_args))
    os.environ.update(settings.env)
    return AsyncLLM.from_engine_args(AsyncEngineArgs(**settings.engine_args))


class VllmEngine:
    """`async with VllmEngine(engine_args, reward) as engine:` starts vLLM (and, for a `prm` or
    `orm` reward, its pooling engine) and shuts them down on exit. `reward`: reward's model.json."""

    def __init__(self, engine_args: Mapping[str, Any], reward: Mapping[str, Any]):
        self.engine_args = dict(engine_args)
        self.reward = check_settings(reward)
        self.judge = dict(self.reward.judge or {})
        self._llm: Any = None
        self._reward_llm: Any = None
        self._scorer: PoolingReward | None = None
        self.tokenizer: Any = None

    async def __aenter__(self) -> VllmEngine:
        self._llm = start_engine(self.engine_args)
        self.tokenizer = self._llm.get_tokenizer()
        if self.reward.mode != "judge":
            tokenizer = load_tokenizer(self.reward.engine)
            self._reward_llm = start_engine(pooling_engine_args(self.reward, tokenizer))
            self._scorer = PoolingReward(self.reward, self._reward_llm, tokenizer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        for llm in (self._llm, self._reward_llm):
            if llm is not None:
                llm.shutdown()
        self._llm = self._reward_llm = self._scorer = None

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
        if self._scorer is not None:
            return [s.score for s in await self._scorer.score(question, candidates, f"reward-{id(candidates)}")]
        return await self.judge_scores(question, candidates, self.judge)

    async def judge_scores(self, question: str, candidates: Sequence[str], judge: Mapping[str, Any]) -> list[float]:
        """The generative judge's scores on the policy engine (`judge`: a judge-mode model.json),
        whatever mode `score` serves: a benchmark sets them beside a reward model's."""
        async def one(i: int, candidate: str) -> float:
            prompt = judge["prompt"].format(question=question, candidate=candidate)
            call = GenerateCall(request_id=f"judge-{id(candidates)}-{i}", sampling=SamplingSpec(max_tokens=1, temperature=0.0, logprobs=20),
                                messages=(ChatMessage("user", prompt),))
            top: dict[str, float] = {}
            async for deltas in self.generate(call):
                for d in deltas:
                    top = d.top_logprobs[0] if d.top_logprobs else top
            return judge_score(top, judge.get("yes_tokens", ["yes"]), judge.get("no_tokens", ["no"]))

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(candidates))))
