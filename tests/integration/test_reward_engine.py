"""`reward` with an engine of its own on the real server: the default Qwen model as a step-tag
process reward model (deploy/reward/prm-qwen-step-tag.json) on vLLM's pooling runner, beside the
small policy. Scores per step and per candidate, the readiness gauge, a Rebase program scored by it
end to end, bad requests and bad settings refused with the field named."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from client.dynasor_client import DynasorClient
from engines.grpc_stream import StreamCall, StreamError
from serving.launcher import MODELS_DIR, REPO_ROOT, start_server
from tests.conftest import TEST_MODEL
from tests.integration.helpers import engine_cores, metric_values, ready_or_stopped, wait_for

pytestmark = pytest.mark.integration

PRM_SETTINGS = REPO_ROOT / "deploy" / "reward" / "prm-qwen-step-tag.json"
Q = "Tom has 3 apples and buys 5 more. How many apples does he have now?"


def _prm_settings(**changes) -> dict:
    doc = json.loads(PRM_SETTINGS.read_text())
    doc["engine"] = {**doc["engine"], "enforce_eager": True}
    doc.update(changes)
    return doc


@pytest.fixture(scope="module")
def prm_server():
    if not (MODELS_DIR / "qwen2.5-coder-0.5b").is_dir():
        pytest.fail("models/qwen2.5-coder-0.5b is missing: run `make setup` first")
    srv = ready_or_stopped(start_server(policy_model=TEST_MODEL, engine_overrides={"enforce_eager": True},
                                        reward_settings=_prm_settings()))
    yield srv
    srv.stop()


def _reward_metric(srv, name: str) -> float:
    return sum(v for labels, v in metric_values(srv, name).items() if 'model="reward"' in labels)


def _score(srv, question: str, candidates: list[str]) -> dict:
    responses = StreamCall(srv.grpc_url, "reward", {"question": question, "candidates": candidates}).collect()
    return next(r.outputs for r in responses if "scores" in r.outputs)


def test_prm_scores_every_step_and_aggregates_them(prm_server):
    cands = ["Tom starts with 3 apples.\nHe buys 5 more.\n3 + 5 = 8. The answer is 8.", "3 + 5 = 9. The answer is 9.",
             "Tom starts with 3 apples.\n\nHe eats them all."]
    out = _score(prm_server, Q, cands)
    scores, steps, counts = out["scores"], out["step_scores"], out["num_steps"]
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert counts.tolist() == [3, 1, 2], "one score per non-blank line"
    assert steps.shape == (6,) and np.all((steps >= 0) & (steps <= 1))
    at = 0
    for score, n in zip(scores, counts):
        assert math.isclose(score, min(steps[at:at + n]), rel_tol=1e-6), "aggregate 'min' of the candidate's own steps"
        at += n
    assert len(set(np.round(steps, 5))) > 1, "every step got the same score: no evidence read at all"
    assert _reward_metric(prm_server, "dynasor_engine_ready") == 1


def test_a_rebase_program_runs_on_the_process_reward_model(prm_server):
    before = _reward_metric(prm_server, "dynasor_engine_requests_total")
    result = DynasorClient(prm_server.grpc_url).solve(Q, "rebase", {"budget": 4, "max_tokens": 48, "max_depth": 2})
    assert result.stop_reason is not None and result.steps >= 1
    assert _reward_metric(prm_server, "dynasor_engine_requests_total") > before


def test_a_candidate_too_long_for_the_reward_model_names_the_field(prm_server):
    with pytest.raises(StreamError, match=r"candidates\[1\]: \d+ tokens .* max_model_len 4096"):
        StreamCall(prm_server.grpc_url, "reward", {"question": Q, "candidates": ["fine", "7 + 1 = 8\n" * 3000]}).collect()
    assert _score(prm_server, Q, ["The answer is 8."])["num_steps"].tolist() == [1], "the server kept serving"


def test_a_dead_reward_engine_fails_requests_at_once_and_is_rebuilt(prm_server):
    (core,) = engine_cores(prm_server, "reward")
    core.kill()
    errors = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            _score(prm_server, Q, ["The answer is 8."])
        except StreamError as e:
            errors.append((str(e), time.monotonic() - started))
        time.sleep(0.2)
    assert errors and all("reward engine" in m and s < 1.0 for m, s in errors), errors
    assert wait_for(lambda: _reward_metric(prm_server, "dynasor_engine_ready") == 1, timeout_s=300, interval_s=1)
    assert _reward_metric(prm_server, "dynasor_engine_deaths_total") >= 1
    assert _score(prm_server, Q, ["3 + 5 = 8.", "The answer is 8."])["num_steps"].tolist() == [1, 1]
    (new_core,) = engine_cores(prm_server, "reward")
    assert new_core.pid != core.pid


@pytest.mark.parametrize("changes, message", [
    ({"aggregate": "max"}, "model.json: aggregate: expected one of last, min, product, mean, got 'max'"),
    ({"step_tag": "two words"}, "model.json: step_tag: 'two words' must be one token of the model's tokenizer"),
    ({"label_tokens": ["-", "not-a-token"]}, "model.json: label_tokens[1]: 'not-a-token' is not a token"),
])
def test_bad_reward_settings_are_refused_at_load_with_the_field_named(changes, message):
    srv = start_server(reward_settings=_prm_settings(**changes),
                       extra_args=["--model-control-mode=explicit", "--load-model=reward"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and message not in srv.log_tail(200):
            time.sleep(0.5)
        assert message in srv.log_tail(200)
    finally:
        srv.stop()
