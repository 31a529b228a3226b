"""A process or outcome reward model on vLLM's pooling runner: engine arguments from `reward`'s
settings, and candidates scored through `AsyncLLM.encode`. Shared by the `reward` Triton model (its
own engine, hosted like `policy`'s) and the direct engine of `dynasor record`.

- prm: the candidate's steps each followed by the step tag, as token ids (a tag never merges with
  its neighbours into another token); step pooling returns one row per tag. On a causal LM with
  `label_tokens` the model is converted to a classifier whose two rows are the LM head's rows for
  those tokens (vLLM's `classifier_from_token`, as for rerankers made from LMs): P(positive) at
  each tag, softmax over the pair. On a `*ForProcessRewardModel` its own head gives the two labels.
- orm: the whole candidate; a sequence classifier's score, or a `*ForRewardModel`'s last token's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scheduler_backend.errors import RequestError
from scheduler_backend.reward_steps import RewardSettings, RewardSettingsError, aggregate, split_steps


@dataclass(frozen=True)
class RewardScore:
    """A candidate's score in [0, 1] and, for a process reward model, its steps' scores."""

    score: float
    steps: tuple[float, ...] = ()


def _one_token(tokenizer: Any, text: str, field: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise RewardSettingsError(f"model.json: {field}: {text!r} must be one token of the model's tokenizer, it is {len(ids)}")
    return int(ids[0])


def pooling_engine_args(settings: RewardSettings, tokenizer: Any) -> dict[str, Any]:
    """vLLM engine arguments for the mode: the pooling runner, and for a prm the step pooler on the
    tag's token id (and the two-way classifier made from `label_tokens`)."""
    from vllm.config import PoolerConfig

    args = {**settings.engine, "runner": "pooling"}
    if settings.mode == "prm":
        args["pooler_config"] = PoolerConfig(tok_pooling_type="STEP", step_tag_id=_one_token(tokenizer, settings.step_tag or "", "step_tag"))
        if settings.label_tokens:
            vocab = tokenizer.get_vocab()
            for i, token in enumerate(settings.label_tokens):
                if token not in vocab:
                    raise RewardSettingsError(f"model.json: label_tokens[{i}]: {token!r} is not a token of the model's vocabulary")
            args["convert"] = "classify"
            args["hf_overrides"] = {**settings.engine.get("hf_overrides", {}),
                                    "classifier_from_token": list(settings.label_tokens), "method": "no_post_processing"}
    return args


class PoolingReward:
    """Scores candidates with a started AsyncLLM pooling engine (`engine`), as `settings` say."""

    def __init__(self, settings: RewardSettings, engine: Any, tokenizer: Any):
        self.settings = settings
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_model_len = int(engine.model_config.max_model_len)
        # A prm always has a tag (check_settings); an orm reads no steps.
        self.step_tag_id = _one_token(tokenizer, settings.step_tag, "step_tag") if settings.step_tag else None
        self._task: Literal["classify", "token_classify"] | None = None

    async def _pooling_task(self) -> Literal["classify", "token_classify"]:
        """An orm is a sequence classifier where the model is one, else its last token's score."""
        if self._task is None:
            tasks = await self.engine.get_supported_tasks()
            self._task = "classify" if self.settings.mode == "orm" and "classify" in tasks else "token_classify"
        return self._task

    def _ids(self, text: str, first: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=first)) if text else []

    def prompt_ids(self, question: str, candidate: str) -> tuple[list[int], int]:
        """The token ids scored and the number of steps in them (0 for an orm)."""
        head, marker, tail = self.settings.template.format(question=question, steps="\x00").partition("\x00")
        if not marker:
            head, tail = self.settings.template.format(question=question, steps=""), ""
        if self.settings.mode == "orm":
            return self._ids(head + candidate + tail, True), 0
        tag = self.step_tag_id
        if tag is None:
            raise RewardSettingsError("model.json: step_tag: a process reward model needs the tag after which each step is scored")
        steps = split_steps(candidate, self.settings.step_separator, self.settings.max_steps)
        ids = self._ids(head, True)
        for i, step in enumerate(steps):
            ids += self._ids(step if i == 0 else self.settings.step_joiner + step, not ids) + [tag]
        return ids + self._ids(tail, False), len(steps)

    def _probability(self, row: Any) -> float:
        """P(positive) of a row: a two-label row is a softmax already; one value is a probability
        unless it is out of [0, 1], a regression head's raw reward, mapped by the sigmoid."""
        values = [float(v) for v in row.reshape(-1).tolist()]
        if len(values) > 1:
            return values[self.settings.positive_label]
        return values[0] if 0.0 <= values[0] <= 1.0 else 1.0 / (1.0 + math.exp(-values[0]))

    async def score_one(self, question: str, candidate: str, request_id: str, where: str, priority: int = 0) -> RewardScore:
        """One candidate's score; RequestError naming `where` when it does not fit the model."""
        from vllm import PoolingParams

        ids, n_steps = self.prompt_ids(question, candidate)
        if len(ids) > self.max_model_len:
            raise RequestError(f"{where}: {len(ids)} tokens as the reward model reads it, over its max_model_len {self.max_model_len}")
        data = None
        async for out in self.engine.encode({"prompt_token_ids": ids}, PoolingParams(task=await self._pooling_task()), request_id, priority=priority):
            data = out.outputs.data
        if data is None:
            raise RuntimeError(f"{where}: the reward engine returned nothing")
        if self.settings.mode == "orm":
            rows = data if data.dim() > 1 else data.reshape(1, -1)
            return RewardScore(self._probability(rows[-1]))
        if data.shape[0] < n_steps:
            raise RuntimeError(f"{where}: {data.shape[0]} step scores for {n_steps} steps")
        # Rows are the tags in order; a tag inside the template (before the steps) adds rows first.
        steps = tuple(self._probability(row) for row in data[data.shape[0] - n_steps:])
        return RewardScore(aggregate(steps, self.settings.aggregate), steps)

    async def score(self, question: str, candidates: Sequence[str], request_id: str, priority: int = 0) -> list[RewardScore]:
        """Every candidate's score, scored at once (the engine batches them)."""
        import asyncio

        return list(await asyncio.gather(*(
            self.score_one(question, c, f"{request_id}-{i}", f"candidates[{i}]", priority) for i, c in enumerate(candidates))))


def load_tokenizer(engine_args: Mapping[str, Any]) -> Any:
    """The reward model's tokenizer, before its engine exists (the engine arguments need the tag's id)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(engine_args.get("tokenizer") or engine_args["model"],
                                         trust_remote_code=bool(engine_args.get("trust_remote_code", False)))
