#!/usr/bin/env bash
# Compile the locks from their top-level lists with uv: requirements/cpu.txt from cpu.in and
# gpu.txt from gpu.in, each for Linux x86_64 and Python 3.11, every file's sha256 recorded, the
# packages of requirements/overrides.txt left out. Pins already in a lock are kept unless
# UPGRADE=1 (then every package moves to the newest release the top-level pins allow).
# `make lock` runs it; `make setup` then installs the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
FIND_LINKS=${DYNASOR_FIND_LINKS:-/opt/wheels}
upgrade=()
[ "${UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)
for target in cpu gpu; do
  # Only the CPU lock reads the wheel folder (its torch+cpu); the GPU lock takes the registry's torch.
  links=()
  [ "$target" = cpu ] && [ -d "$FIND_LINKS" ] && links=(--find-links "$FIND_LINKS")
  "$UV" pip compile -q "requirements/$target.in" --override requirements/overrides.txt "${links[@]}" "${upgrade[@]}" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_35 --generate-hashes --no-header \
    -o "requirements/$target.txt"
  echo "lock: requirements/$target.txt, $(grep -c '^[a-z0-9].*==' "requirements/$target.txt") packages"
done
