"""How a reward model's settings turn candidates into scores, whatever engine runs the model.

`reward` serves one of three modes (model.json `mode`):
- `judge`: a generative judge asks `policy` whether the solution so far is correct (P(yes));
- `prm`: a process reward model gives a score per step, read at a tag after each step;
- `orm`: an outcome reward model gives one score per whole candidate.

A process reward model's candidate is split into steps at `step_separator`; which step scores
count is `aggregate` (the reward-model literature uses all four: the last step's score, the
minimum over steps, their product, their mean). The settings are checked when the model loads,
and every refusal names the field. No engine or Triton import: the `reward` model, the direct
engine and the tests share this.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("judge", "prm", "orm")
AGGREGATES = ("last", "min", "product", "mean")
_JUDGE_KEYS = {"mode", "judge_model", "prompt", "yes_tokens", "no_tokens"}
_ENGINE_KEYS = {"mode", "engine", "template", "step_separator", "step_joiner", "step_tag", "label_tokens",
                "positive_label", "aggregate", "max_steps", "cuda_visible_devices"}


class RewardSettingsError(ValueError):
    """A bad model.json setting; the message names the field."""


@dataclass(frozen=True)
class RewardSettings:
    """`reward`'s model.json, checked. `engine` holds vLLM engine arguments (prm and orm only).

    prm on a causal LM (a step-tag PRM such as Math-Shepherd, or an instruct model used as one):
    `label_tokens` [negative, positive] become a two-way classifier made from the LM head's rows
    for those tokens, read at every `step_tag`. prm on a `*ForProcessRewardModel` architecture: no
    `label_tokens`, the model's own two-label head; `step_tag` is its step token."""

    mode: str
    engine: Mapping[str, Any]
    template: str = "{question}\n\n"
    step_separator: str = "\n"
    step_joiner: str = "\n"
    step_tag: str | None = None
    label_tokens: tuple[str, ...] = ()
    positive_label: int = 1
    aggregate: str = "min"
    max_steps: int = 64
    cuda_visible_devices: str | None = None
    judge: Mapping[str, Any] | None = None


def _field(doc: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = doc.get(key, default)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise RewardSettingsError(f"model.json: {key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def check_settings(doc: Any) -> RewardSettings:
    """model.json of `reward` as RewardSettings, or RewardSettingsError naming the first bad field."""
    if not isinstance(doc, Mapping):
        raise RewardSettingsError(f"model.json: expected a JSON object, got {type(doc).__name__}")
    mode = doc.get("mode", "judge")
    if mode not in MODES:
        raise RewardSettingsError(f"model.json: mode: expected one of {', '.join(MODES)}, got {mode!r}")
    known = _JUDGE_KEYS if mode == "judge" else _ENGINE_KEYS
    unknown = sorted(set(doc) - known)
    if unknown:
        raise RewardSettingsError(f"model.json: {unknown[0]}: not a setting of mode {mode!r} (known: {', '.join(sorted(known))})")
    if mode == "judge":
        for key in ("prompt",):
            if not isinstance(doc.get(key), str) or "{candidate}" not in doc[key]:
                raise RewardSettingsError(f"model.json: {key}: expected a template with {{question}} and {{candidate}}")
        for key in ("yes_tokens", "no_tokens"):
            tokens = doc.get(key, ["yes" if key == "yes_tokens" else "no"])
            if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
                raise RewardSettingsError(f"model.json: {key}: expected a non-empty list of strings")
        return RewardSettings(mode=mode, engine={}, judge=dict(doc))
    engine = doc.get("engine")
    if not isinstance(engine, Mapping) or not isinstance(engine.get("model"), str) or not engine["model"]:
        raise RewardSettingsError("model.json: engine: expected an object of vLLM engine arguments with a 'model'")
    for key in ("runner", "convert", "pooler_config"):
        if key in engine:
            raise RewardSettingsError(f"model.json: engine.{key}: set by the mode, not by hand")
    template = _field(doc, "template", str, "{question}\n\n")
    if "{question}" not in template:
        raise RewardSettingsError("model.json: template: must contain {question}")
    separator = _field(doc, "step_separator", str, "\n")
    if not separator:
        raise RewardSettingsError("model.json: step_separator: must not be empty")
    joiner = _field(doc, "step_joiner", str, separator)
    devices = _field(doc, "cuda_visible_devices", str, None)
    labels = _field(doc, "label_tokens", list, [])
    if labels and (len(labels) != 2 or not all(isinstance(t, str) and t for t in labels)):
        raise RewardSettingsError("model.json: label_tokens: expected [negative, positive], two non-empty strings")
    step_tag = _field(doc, "step_tag", str, None)
    if mode == "prm" and not step_tag:
        raise RewardSettingsError("model.json: step_tag: a process reward model needs the tag after which each step is scored")
    if mode == "orm" and (labels or step_tag):
        raise RewardSettingsError(f"model.json: {'label_tokens' if labels else 'step_tag'}: an outcome reward model reads no steps")
    aggregate = _field(doc, "aggregate", str, "min")
    if aggregate not in AGGREGATES:
        raise RewardSettingsError(f"model.json: aggregate: expected one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    positive = _field(doc, "positive_label", int, 1)
    if positive not in (0, 1):
        raise RewardSettingsError(f"model.json: positive_label: expected 0 or 1, got {positive}")
    max_steps = _field(doc, "max_steps", int, 64)
    if max_steps < 1:
        raise RewardSettingsError(f"model.json: max_steps: expected at least 1, got {max_steps}")
    return RewardSettings(mode=mode, engine=dict(engine), template=template, step_separator=separator, step_joiner=joiner,
                          step_tag=step_tag, label_tokens=tuple(labels), positive_label=positive, aggregate=aggregate,
                          max_steps=max_steps, cuda_visible_devices=devices)


def split_steps(candidate: str, separator: str, max_steps: int) -> list[str]:
    """A candidate's non-blank steps; past `max_steps` the rest is one last step (a step's tag is a
    prompt token, so the steps bound the work of one scoring call). Blank text is one empty step:
    every candidate gets a score."""
    steps = [s for s in candidate.split(separator) if s.strip()]
    if len(steps) > max_steps:
        steps = steps[: max_steps - 1] + [separator.join(steps[max_steps - 1:])]
    return steps or [""]


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """One candidate score from its step scores, as `how` says."""
    if not step_scores:
        raise ValueError("aggregate: no step scores")
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "product":
        return float(math.prod(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    raise ValueError(f"aggregate: expected one of {', '.join(AGGREGATES)}, got {how!r}")
