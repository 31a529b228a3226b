"""`python -m serving.compile_cache [MODEL]`: warm vLLM's torch.compile cache for the policy model
with the very engine settings `policy` will pick on this machine, so that the first
`tritonserver` start loads compiled graphs instead of compiling them (minutes on a 2-core CPU).
Run by `make warm` (before demo, serve and the benchmarks); a stamp under models/ skips it once
the same settings are warm."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from engines.engine_settings import settings_for_this_machine
from serving.launcher import MODEL_REPOSITORY, MODELS_DIR
from serving.model_config import policy_engine_args
from serving.quiet_step import run_quietly


def _stamp(engine_args: dict, env: dict[str, str]) -> Path:
    import vllm

    key = json.dumps({"args": engine_args, "env": env, "vllm": vllm.__version__}, sort_keys=True)
    return MODELS_DIR / f".compile-warm-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _warm(model: str, engine_args: dict, stamp: Path) -> None:
    """In the child: build the engine once (compiling its graphs into the cache) and write the stamp."""
    from vllm import LLM, SamplingParams

    args = {k: v for k, v in engine_args.items() if k != "disable_log_stats"}
    llm = LLM(**args)
    llm.generate(["warm up"], SamplingParams(max_tokens=2), use_tqdm=False)
    stamp.write_text(json.dumps(engine_args, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    child = "--child" in argv
    argv = [a for a in argv if a != "--child"]
    model = argv[0] if argv else json.loads((MODEL_REPOSITORY / "policy" / "1" / "model.json").read_text())["model"]
    settings = settings_for_this_machine(policy_engine_args(model))
    if settings.engine_args.get("enforce_eager", False):
        print("compile cache: the policy engine runs eager here; nothing to warm")
        return 0
    stamp = _stamp(settings.engine_args, settings.env)
    if stamp.exists():
        print("compile cache: already warm for these engine settings")
        return 0
    env = {**os.environ, **settings.env}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if child:
        os.environ.update(env)
        _warm(model, settings.engine_args, stamp)
        return 0
    print(f"compile cache: warming torch.compile for {model} ({settings.describe()}); minutes on a small CPU", flush=True)
    run_quietly("compile cache", [sys.executable, "-m", "serving.compile_cache", "--child", *argv],
                MODELS_DIR / "compile-warm.log", env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
