"""`dynasor ask`'s progress line: updated in place on a terminal, a line per change elsewhere,
nothing with --quiet."""
from __future__ import annotations

import io

from client.cli import ProgressLine
from client.dynasor_client import Progress


def progress(steps: int, tokens: int, final: bool = False) -> Progress:
    return Progress(answer="8", certaindex=0.5, final=final, stop_reason="", tokens_used=tokens, steps=steps, details={"budget": 8})


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_one_line_per_change_and_no_repeats() -> None:
    out = io.StringIO()
    line = ProgressLine(out)
    for p in (progress(2, 100), progress(2, 100), progress(2, 100), progress(4, 200), progress(4, 200, final=True)):
        line.show(p)
    line.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "steps=2/8" in lines[0] and "steps=4/8" in lines[1]


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    out = Terminal()
    line = ProgressLine(out)
    line.show(progress(2, 100))
    line.show(progress(4, 200))
    line.close()
    text = out.getvalue()
    assert text.count("\r\033[K") == 2 and text.count("\n") == 1 and text.endswith("tokens=200\n")


def test_quiet_prints_no_progress() -> None:
    out = Terminal()
    line = ProgressLine(out, quiet=True)
    line.show(progress(2, 100))
    line.close()
    assert out.getvalue() == ""
