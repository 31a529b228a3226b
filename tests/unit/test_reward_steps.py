"""Reward settings checked at load (every refusal names its field), steps split, scores aggregated;
and the shipped reward settings files all pass the check."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scheduler_backend.reward_steps import RewardSettingsError, aggregate, check_settings, split_steps

ROOT = Path(__file__).resolve().parents[2]
PRM = {"mode": "prm", "engine": {"model": "m"}, "step_tag": "ки", "label_tokens": ["-", "+"]}


def test_shipped_settings_pass_the_check():
    served = check_settings(json.loads((ROOT / "model_repository/reward/1/model.json").read_text()))
    assert served.mode == "judge" and "{candidate}" in served.judge["prompt"]
    examples = sorted((ROOT / "deploy/reward").glob("*.json"))
    assert len(examples) >= 3
    modes = {check_settings(json.loads(p.read_text())).mode for p in examples}
    assert modes == {"prm", "orm"}


def test_prm_defaults():
    s = check_settings(PRM)
    assert (s.aggregate, s.step_separator, s.step_joiner, s.positive_label) == ("min", "\n", "\n", 1)
    assert s.label_tokens == ("-", "+")


@pytest.mark.parametrize("doc, field", [
    ({"mode": "reward"}, "mode"),
    ({**PRM, "aggregate": "max"}, "aggregate"),
    ({**PRM, "engine": {}}, "engine"),
    ({**PRM, "engine": {"model": "m", "runner": "generate"}}, "engine.runner"),
    ({**PRM, "label_tokens": ["+"]}, "label_tokens"),
    ({k: v for k, v in PRM.items() if k != "step_tag"}, "step_tag"),
    ({**PRM, "template": "no question here"}, "template"),
    ({**PRM, "step_separator": ""}, "step_separator"),
    ({**PRM, "positive_label": 2}, "positive_label"),
    ({**PRM, "positive_label": True}, "positive_label"),
    ({**PRM, "max_steps": 0}, "max_steps"),
    ({**PRM, "stepp_tag": "x"}, "stepp_tag"),
    ({"mode": "orm", "engine": {"model": "m"}, "step_tag": "x"}, "step_tag"),
    ({"mode": "judge", "prompt": "no candidate"}, "prompt"),
    ({"mode": "judge", "prompt": "{question} {candidate}", "yes_tokens": []}, "yes_tokens"),
    ({"mode": "judge", "prompt": "{question} {candidate}", "engine": {"model": "m"}}, "engine"),
])
def test_bad_settings_name_the_field(doc, field):
    with pytest.raises(RewardSettingsError, match=rf"model.json: {field}\b"):
        check_settings(doc)


def test_split_steps_drops_blank_lines_and_bounds_the_count():
    assert split_steps("a\n\n b \nc", "\n", 8) == ["a", " b ", "c"]
    assert split_steps("   ", "\n", 8) == [""]
    assert split_steps("1\n2\n3\n4", "\n", 2) == ["1", "2\n3\n4"]


def test_aggregates():
    scores = [0.9, 0.5, 0.8]
    assert aggregate(scores, "last") == 0.8
    assert aggregate(scores, "min") == 0.5
    assert math.isclose(aggregate(scores, "product"), 0.36)
    assert math.isclose(aggregate(scores, "mean"), 2.2 / 3)
    with pytest.raises(ValueError, match="aggregate"):
        aggregate(scores, "max")
    with pytest.raises(ValueError, match="no step scores"):
        aggregate([], "min")
