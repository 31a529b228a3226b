"""A long set-up step run as a child process whose own output (vLLM's, transformers', pip's) goes to
a log file, while the screen shows one line with the time it has taken, updated in place on a
terminal. A newcomer sees the project's phases; a failure still shows the log's end in full."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm


def run_quietly(label: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None, tail_lines: int = 80) -> None:
    """Run `cmd` with its output in `log_path`; raise SystemExit with the log's end if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with tqdm(desc=label, bar_format="{desc}: {elapsed} (log " + str(log_path) + ")", file=sys.stdout,
                  disable=not sys.stdout.isatty()) as bar:
            while proc.poll() is None:
                time.sleep(0.5)
                bar.refresh()
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines()
        sys.stderr.write("\n".join(lines[-tail_lines:]) + "\n")
        raise SystemExit(f"{label}: failed with exit code {proc.returncode} after {time.monotonic() - t0:.0f} s; whole log {log_path}")
    print(f"{label}: done in {time.monotonic() - t0:.0f} s (log {log_path})", flush=True)
