# The serving image: the repository, its locked environment and the two small models, serving
# `dynasor serve` on all addresses. One recipe for both targets:
#   docker build --build-arg FIND_LINKS=URL-or-folder -t dynasor-triton:cpu .   # what the CPU machines run
#   docker build --build-arg TARGET=gpu -t dynasor-triton:gpu .        # vLLM's CUDA build (requirements/gpu.txt)
#   docker run --gpus all -p 8000-8002:8000-8002 -p 9000:9000 dynasor-triton:gpu
# NOT BUILT OR RUN in this project: its machines have no Docker engine and no GPU (docs/gpu.md).
#
# Debian 12 (glibc 2.36) for the manylinux_2_35 wheels of nvidia-pytriton (tritonserver 2.51 and
# its Python backend); the official Python image's libpython is shared, which the backend stub
# loads (docs/PLATFORM.md pitfall 3). CUDA comes as the lock's nvidia-* wheels beside torch 2.13.0,
# so the host needs an NVIDIA driver for CUDA 13 and the NVIDIA container toolkit.
FROM python:3.11.7-slim-bookworm

ARG TARGET=cpu
# The CPU lock's torch 2.13.0+cpu is not on PyPI: name a wheel folder or a CPU wheel index that has
# it (uv's --find-links takes either). The GPU lock needs nothing here.
ARG FIND_LINKS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# bubblewrap + the distribution's Python: the `code` program's sandbox (docs/code.md says what a
# container's seccomp profile must allow for it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap python3-minimal libtcmalloc-minimal4 make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dynasor
# The locks first, so a code change does not reinstall the packages.
COPY requirements/ requirements/
RUN python -m venv .venv \
 && .venv/bin/python -m pip install -q --no-deps --require-hashes -r <(sed -n '/^uv==/,/# via/p' requirements/$TARGET.txt) \
 && .venv/bin/uv pip sync --python .venv/bin/python --require-hashes ${FIND_LINKS:+--find-links "$FIND_LINKS"} requirements/$TARGET.txt
COPY . .
# The same script as `make setup` (it finds the lock installed and skips it), then the models.
RUN DYNASOR_TARGET=$TARGET DYNASOR_FIND_LINKS=$FIND_LINKS bash scripts/setup.sh

EXPOSE 8000 8001 8002 9000
# tritonserver with the three models, and the OpenAI front; SIGTERM stops both.
ENTRYPOINT [".venv/bin/dynasor", "serve", "--address", "0.0.0.0", "--openai-port", "9000"]
