#!/usr/bin/env bash
# Idempotent set-up: .venv holding exactly the locked package set for this machine
# (requirements/cpu.txt, or gpu.txt on a host with an NVIDIA GPU), the project itself editable,
# the two models under models/, bubblewrap for the code sandbox. One line per phase; the package
# tools' own output goes to .venv/setup.log and is shown only when a step fails.
# Update the locks with `make lock` (scripts/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
LOG=$VENV/setup.log
T0=$(date +%s)

TARGET=${DYNASOR_TARGET:-}
if [ -z "$TARGET" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TARGET=gpu; else TARGET=cpu; fi
fi
LOCK=requirements/$TARGET.txt
[ -f "$LOCK" ] || { echo "setup: no lock $LOCK (DYNASOR_TARGET is cpu or gpu)" >&2; exit 2; }
# The CPU lock's torch (2.13.0+cpu) comes from a wheel folder: this machine's, or one named here.
FIND_LINKS=${DYNASOR_FIND_LINKS:-/opt/wheels}

phase() { echo "setup: $1 ($(( $(date +%s) - T0 )) s)"; }
run_logged() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 60 "$LOG" >&2
    echo "setup: whole log in $LOG" >&2
    exit 1
  fi
}

[ -x $VENV/bin/python ] || $PY -m venv $VENV
: >"$LOG"
STAMP=$VENV/.dynasor-lock
WANT="$TARGET $(sha256sum "$LOCK" | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  # uv installs the lock exactly (and removes what it does not name); it comes from the lock too.
  run_logged $VENV/bin/python -m pip install -q --no-deps --require-hashes -r <(sed -n '/^uv==/,/# via/p' "$LOCK")
  links=()
  { [ -d "$FIND_LINKS" ] || [[ "$FIND_LINKS" == http*://* ]]; } && links=(--find-links "$FIND_LINKS")
  run_logged $VENV/bin/uv pip sync --python $VENV/bin/python --require-hashes "${links[@]}" "$LOCK"
  echo "$WANT" >"$STAMP"
  phase "packages installed from $LOCK, $(grep -c '^[a-z0-9].*==' "$LOCK") pinned"
else
  phase "packages already match $LOCK"
fi
# The project itself, editable, so `dynasor` and the packages follow the working tree.
run_logged $VENV/bin/uv pip install --python $VENV/bin/python --no-deps --no-build-isolation -e .
$VENV/bin/python -m serving.models all
# From the distribution: bubblewrap and its Python for the `code` program's sandbox
# (scheduler_backend/sandbox.py), tcmalloc, which `policy` preloads into its engine on CPU
# (engines/engine_settings.py), and HAProxy for `dynasor fleet` and its tests (deploy/haproxy/). As root with apt, install what is missing; otherwise say so: code
# programs then run in the weaker rlimits-only fallback, and the engine without tcmalloc.
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
[ -x /usr/bin/python3 ] || missing+=(python3-minimal)
[ "$TARGET" = gpu ] || ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || missing+=(libtcmalloc-minimal4)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q "${missing[@]}" >>"$LOG" 2>&1 \
      || { apt-get update -q >>"$LOG" 2>&1 && apt-get install -y -q "${missing[@]}" >>"$LOG" 2>&1; }) \
      && phase "installed ${missing[*]} from the distribution"
  else
    echo "setup: not root with apt-get; install ${missing[*]} (code sandbox, engine allocator, fleet proxy)" >&2
  fi
fi
phase "ready"
