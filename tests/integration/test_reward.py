"""The real `reward` model in its default mode: a generative judge over the served policy model."""
from __future__ import annotations

import numpy as np
import pytest

from engines.grpc_stream import StreamCall, StreamError

pytestmark = pytest.mark.integration


def outputs(server, question, candidates):
    responses = StreamCall(server.grpc_url, "reward", {"question": question, "candidates": candidates}).collect()
    return next(r.outputs for r in responses if "scores" in r.outputs)


def score(server, question, candidates):
    return outputs(server, question, candidates)["scores"]


def test_scores_have_one_value_in_unit_interval_per_candidate(server):
    cands = ["3 + 5 = 8. The answer is 8.", "3 + 5 = 9. The answer is 9.", "First, count the apples."]
    scores = score(server, "Tom has 3 apples and buys 5 more. How many apples?", cands)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert len(set(np.round(scores, 6))) > 1 or not np.allclose(scores, 0.5), "the judge gave no evidence at all"


def test_the_judge_reports_no_steps(server):
    """The judge scores whole candidates: every count of steps is 0 and there are no step scores."""
    out = outputs(server, "Tom has 3 apples and buys 5 more. How many apples?", ["3 + 5 = 8.\nThe answer is 8.", "9"])
    assert out["num_steps"].tolist() == [0, 0] and out["step_scores"].size == 0
    assert out["scores"].shape == (2,)


@pytest.mark.parametrize(
    "inputs, field",
    [
        ({"question": "", "candidates": ["x"]}, "question"),
        ({"question": "q", "candidates": ["x"] * 65}, "candidates"),
        ({"question": "q", "candidates": ["y" * 40000]}, "candidates[0]"),
    ],
)
def test_bad_reward_requests_name_the_field(server, inputs, field):
    with pytest.raises(StreamError, match=field.replace("[", r"\[")):
        StreamCall(server.grpc_url, "reward", inputs).collect()
