"""Engine settings follow the machine: bf16 only where the CPU computes it natively, every core
computing on a small machine, torch.compile (its cache warmed at set-up); whatever model.json or the
environment says wins."""
from __future__ import annotations

from engines.engine_settings import choose_engine_settings, cpu_flags, cpu_model

AVX2 = frozenset({"avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}


def test_cpu_without_native_bf16_gets_float32_and_with_it_bf16():
    assert choose_engine_settings({}, gpu=False, flags=AVX2, cores=2, environ={}).engine_args["dtype"] == "float32"
    assert choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={}).engine_args["dtype"] == "bfloat16"
    amx = choose_engine_settings({}, gpu=False, flags=AVX2 | {"amx_bf16"}, cores=2, environ={})
    assert amx.engine_args["dtype"] == "bfloat16" and "amx_bf16" in amx.describe()


def test_cpu_engines_compile_unless_told_to_run_eager():
    chosen = choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={})
    assert chosen.engine_args["enforce_eager"] is False and "enforce_eager=false" in chosen.describe()
    assert chosen.env["VLLM_USE_AOT_COMPILE"] == "0", "the AOT cache does not load on vLLM-CPU: its start would compile every time"
    eager = choose_engine_settings({"enforce_eager": True}, gpu=False, flags=ZEN4, cores=2, environ={})
    assert eager.engine_args["enforce_eager"] is True and "VLLM_USE_AOT_COMPILE" not in eager.env
    kept = choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={"VLLM_USE_AOT_COMPILE": "1"})
    assert "VLLM_USE_AOT_COMPILE" not in kept.env


def test_explicit_settings_are_kept():
    s = choose_engine_settings({"dtype": "bfloat16", "enforce_eager": False}, gpu=False, flags=AVX2, cores=2,
                               environ={"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})
    assert s.engine_args == {"dtype": "bfloat16", "enforce_eager": False}
    assert s.env == {"VLLM_USE_AOT_COMPILE": "0"}, "only the compile-cache workaround: nothing explicit is changed"
    assert len(s.choices) == 1


def test_small_machines_compute_on_every_core_and_big_ones_keep_vllms_reservation():
    assert choose_engine_settings({}, gpu=False, flags=AVX2, cores=2, environ={}).env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in choose_engine_settings({}, gpu=False, flags=AVX2, cores=16, environ={}).env


def test_gpu_hosts_keep_the_models_dtype_and_cuda_graphs():
    s = choose_engine_settings({"model": "m"}, gpu=True, flags=AVX2, cores=2, environ={})
    assert s.engine_args == {"model": "m"} and s.env == {}


def test_cpu_flags_and_model_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_model(str(info)).startswith("Test CPU 9000") and "avx512_bf16" in cpu_model(str(info))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_cpu_engines_preload_what_the_machine_has_unless_the_environment_says_otherwise():
    libs = {"tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "Intel OpenMP": "/venv/lib/libiomp5.so"}
    s = choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={}, preloads=libs)
    assert s.env["LD_PRELOAD"].split() == list(libs.values()) and "tcmalloc + Intel OpenMP" in s.describe()
    one = choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={}, preloads={"tcmalloc": libs["tcmalloc"]})
    assert one.env["LD_PRELOAD"] == libs["tcmalloc"]
    assert "LD_PRELOAD" not in choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={}, preloads={}).env
    assert "LD_PRELOAD" not in choose_engine_settings({}, gpu=False, flags=ZEN4, cores=2, environ={"LD_PRELOAD": ""}, preloads=libs).env
    assert choose_engine_settings({}, gpu=True, flags=ZEN4, cores=2, environ={}, preloads=libs).env == {}


def test_the_preloads_found_on_this_machine_preload_into_python():
    """The dynamic loader only warns (and goes on without) when a preload cannot be loaded."""
    import os
    import subprocess
    import sys

    from engines.engine_settings import preload_libraries

    for name, path in preload_libraries().items():
        assert name in ("tcmalloc", "Intel OpenMP")
        out = subprocess.run([sys.executable, "-c", "import json; print(json.dumps([1]))"], capture_output=True, text=True,
                             env={**os.environ, "LD_PRELOAD": path}, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "[1]"
        assert "cannot be preloaded" not in out.stderr, out.stderr
