"""The process and outcome reward model paths (engines/vllm_reward.py) on vLLM's pooling runner,
each on a tiny model of its architecture that the test builds on the fly: random weights, the real
Qwen tokenizer. Plumbing only: a random model's scores mean nothing, so these tests check shapes,
ranges, the step rows and the aggregation, never the scores' sense."""
from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path

import pytest

from engines.vllm_direct import start_engine
from engines.vllm_reward import PoolingReward, load_tokenizer, pooling_engine_args
from scheduler_backend.reward_steps import check_settings
from serving.launcher import MODELS_DIR

pytestmark = pytest.mark.integration

TOKENIZER_FROM = MODELS_DIR / "qwen2.5-coder-0.5b"
Q = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
CANDIDATES = ["Tom starts with 3 apples.\nHe buys 5 more.\n3 + 5 = 8, so the answer is 8.", "The answer is 9."]


def _tiny_model(dest: Path, architecture: str, num_labels: int) -> Path:
    """A two-layer Qwen2 (head size 64: vLLM-CPU has no kernel for smaller heads) of `architecture` with random weights: the backbone from transformers, the
    score head (Linear, ReLU, Linear, as Qwen's reward models have it) added by name."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=False, torch_dtype="float32")
    backbone = Qwen2Model(config)
    weights = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    weights.update({"score.0.weight": torch.randn(128, 128) * 0.1, "score.0.bias": torch.zeros(128),
                    "score.2.weight": torch.randn(num_labels, 128) * 0.1, "score.2.bias": torch.zeros(num_labels)})
    dest.mkdir(parents=True)
    save_file(weights, str(dest / "model.safetensors"))
    doc = config.to_dict()
    doc.update(architectures=[architecture], id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
               label2id={f"LABEL_{i}": i for i in range(num_labels)})
    (dest / "config.json").write_text(json.dumps(doc))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_FROM / name, dest / name)
    return dest


def _score(settings_doc: dict, candidates: list[str]) -> tuple[list, PoolingReward]:
    settings = check_settings(settings_doc)

    async def go() -> tuple[list, PoolingReward]:
        tokenizer = load_tokenizer(settings.engine)
        engine = start_engine(pooling_engine_args(settings, tokenizer))
        try:
            scorer = PoolingReward(settings, engine, tokenizer)
            return await scorer.score(Q, candidates, "arch-test"), scorer
        finally:
            engine.shutdown()

    return asyncio.run(go())


def _engine(model: Path) -> dict:
    return {"model": str(model), "max_model_len": 1024, "max_num_seqs": 8, "enforce_eager": True,
            "gpu_memory_utilization": 0.1}


def test_process_reward_model_architecture_scores_every_step(tmp_path):
    if not TOKENIZER_FROM.is_dir():
        pytest.fail("models/qwen2.5-coder-0.5b is missing: run `make setup` first")
    model = _tiny_model(tmp_path / "prm", "Qwen2ForProcessRewardModel", 2)
    # The tag also appears once inside the template: its row comes before the steps' and is dropped.
    doc = {"mode": "prm", "engine": _engine(model), "template": "{question}\nки\n{steps}", "step_tag": "ки",
           "aggregate": "product"}
    scores, scorer = _score(doc, CANDIDATES)
    assert [len(s.steps) for s in scores] == [3, 1]
    for s in scores:
        assert all(0.0 <= x <= 1.0 for x in s.steps)
        assert math.isclose(s.score, math.prod(s.steps), rel_tol=1e-6)
    ids, steps = scorer.prompt_ids(Q, CANDIDATES[0])
    assert steps == 3 and ids.count(scorer.step_tag_id) == 4


def test_outcome_reward_model_architecture_gives_one_score_per_candidate(tmp_path):
    if not TOKENIZER_FROM.is_dir():
        pytest.fail("models/qwen2.5-coder-0.5b is missing: run `make setup` first")
    model = _tiny_model(tmp_path / "orm", "Qwen2ForRewardModel", 1)
    scores, _ = _score({"mode": "orm", "engine": _engine(model), "template": "{question}\n{steps}"}, CANDIDATES)
    assert [s.steps for s in scores] == [(), ()]
    assert all(0.0 <= s.score <= 1.0 for s in scores), [s.score for s in scores]
    assert scores[0].score != scores[1].score, "two different candidates got the same score"
