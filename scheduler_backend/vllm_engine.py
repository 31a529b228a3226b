"""The Engine over an in-process vLLM AsyncLLM: for trace recording, benchmarks and tests that
drive programs without Triton. Engine arguments come from the same `model.json` the `policy`
model serves with, so both paths run the same engine. Scores come from the same generative judge
the `reward` model uses (P(yes) from the first token's logprobs).

vLLM spawns its engine process: scripts that build one need an `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from scheduler_backend.engine_settings import settings_for_this_machine
from scheduler_backend.judge import judge_score
from scheduler_backend.engine import ChatMessage, EngineError, GenerateCall, SampleDelta, SamplingSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY_MODEL_JSON = REPO_ROOT / "model_repository" / "policy" / "1" / "model.json"
REWARD_MODEL_JSON = REPO_ROOT / "model_repository" / "reward" / "1" / "model.json"


def render_chat(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """Chat template; a final assistant message is continued, not closed (probing a thought)."""
    continue_last = messages[-1].role == "assistant"
    return tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=not continue_last,
        continue_final_message=continue_last,
    )


class VllmEngine:
    """`async with VllmEngine(model_dir) as engine:` starts vLLM and shuts it down on exit."""

    def __init__(self, model: str, **overrides: Any):
        self.engine_args = json.loads(POLICY_MODEL_JSON.read_text())
        self.engine_args.update(overrides, model=model)
        self.judge = json.loads(REWARD_MODEL_JSON.read_text())
        self._llm = None
        self.tokenizer = None

    async def __aenter__(self) -> "VllmEngine":
        import os

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        settings = settings_for_this_machine(self.engine_args)
        os.environ.update(settings.env)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings.engine_args))
        self.tokenizer = self._llm.get_tokenizer()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def _params(self, spec: SamplingSpec):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(n=spec.n, max_tokens=spec.max_tokens, temperature=spec.temperature, top_p=spec.top_p,
                              stop=list(spec.stop) or None, logprobs=spec.logprobs, output_kind=RequestOutputKind.DELTA)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt = render_chat(self.tokenizer, call.messages) if call.messages else call.prompt
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
                        top_logprobs=[{lp.decoded_token: lp.logprob for lp in step.values()} for step in (c.logprobs or [])],
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
