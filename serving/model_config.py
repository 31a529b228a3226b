"""The served models' settings for tools that run the same engine outside Triton (the direct vLLM
engine of `dynasor record`, the benchmarks): read from the model repository here, once, so no
engine reads the repository itself."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from scheduler_backend.allocation import AllocationPolicy, load_calibration
from serving.launcher import MODEL_REPOSITORY, resolve_model


def policy_engine_args(model: str, **overrides: Any) -> dict[str, Any]:
    """`policy`'s vLLM engine arguments (model.json) with `model` resolved and `overrides` applied."""
    args: dict[str, Any] = json.loads((MODEL_REPOSITORY / "policy" / "1" / "model.json").read_text())
    args.update(overrides, model=resolve_model(model))
    return args


def reward_settings(path: str | None = None) -> dict[str, Any]:
    """`reward`'s model.json (the served one, or the file at `path`), its `engine.model` resolved:
    the generative judge's prompt and tokens, or a reward model's engine and step settings."""
    source = Path(path) if path else MODEL_REPOSITORY / "reward" / "1" / "model.json"
    settings: dict[str, Any] = json.loads(source.read_text())
    if isinstance(settings.get("engine"), dict) and isinstance(settings["engine"].get("model"), str):
        settings["engine"] = {**settings["engine"], "model": resolve_model(settings["engine"]["model"])}
    return settings


def dynasor_parameter(key: str) -> str:
    """A `parameters` value of the dynasor model's config.pbtxt, as the server will read it."""
    text = (MODEL_REPOSITORY / "dynasor" / "config.pbtxt").read_text()
    found = re.search(r'\{ key: "' + re.escape(key) + r'", value: \{ string_value: "([^"]*)" \} \}', text)
    if found is None:
        raise KeyError(f"dynasor config.pbtxt: no parameter {key!r}")
    return found.group(1)


def default_allocation(program: str = "self-consistency") -> tuple[str, AllocationPolicy]:
    """The dynasor server's default allocation for `program` (config.pbtxt `default_allocation`:
    NAME[:ENTRY] of shipped calibrations, comma-separated, one per program) and its spec, as the
    server loads it."""
    folder = MODEL_REPOSITORY / "dynasor" / "1" / dynasor_parameter("calibration_dir")
    for spec in (s.strip() for s in dynasor_parameter("default_allocation").split(",") if s.strip()):
        doc = json.loads((folder / f"{spec.partition(':')[0]}.json").read_text())
        if doc.get("program", "self-consistency") == program:
            return spec, load_calibration(spec, folder)
    raise KeyError(f"dynasor config.pbtxt: default_allocation has no calibration for {program}")


