"""The quality floor: the fewest knob units (samples, expansions, iterations, chunks) an answer may
rest on, and what to do when a deadline cannot give it that many. A deadline met with a guess after
one unfinished sample is not a met SLO: the floor makes the difference visible to the client (every
final response says what its answer rests on) and, with `refuse`, keeps such guesses from being
served at all: the program is refused at arrival or as soon as the measured rate shows the floor
cannot be met before its deadline, with an estimate of the time it would need, so a client or a
balancer can go elsewhere. `degrade` answers anyway and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scheduler_backend.program import ProgramState

FLOOR_ACTIONS: tuple[str, ...] = ("degrade", "refuse")


@dataclass(frozen=True)
class QualityFloor:
    """`units`: the fewest knob units an answer rests on (0: no floor); `action` when a deadline
    cannot meet it; `count_probed`: whether answers probed out of unfinished samples count (the
    operator's call: a probe is a guess at where a sample was heading)."""

    units: int = 0
    action: str = "degrade"
    count_probed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.units, bool) or not isinstance(self.units, int) or self.units < 0:
            raise ValueError(f"floor: must be an integer >= 0, got {self.units!r}")
        if self.action not in FLOOR_ACTIONS:
            raise ValueError(f"floor_action: must be one of {', '.join(FLOOR_ACTIONS)}, got {self.action!r}")

    @property
    def refuses(self) -> bool:
        return self.units > 0 and self.action == "refuse"

    def rests_on(self, state: ProgramState) -> int:
        """Knob units the state's answer rests on: finished ones, and probed ones where allowed."""
        probed = int(state.extra.get("probed", 0) or 0)
        return state.steps - (0 if self.count_probed else probed)

    def met(self, state: ProgramState) -> bool:
        """No floor is always met; a floor, by an answer resting on its units."""
        return self.units == 0 or (state.answer is not None and self.rests_on(state) >= self.units)

    def report(self, state: ProgramState) -> dict[str, Any]:
        """What a final response says its answer rests on."""
        probed = int(state.extra.get("probed", 0) or 0)
        return {"units": state.steps - probed, "probed": probed, "floor": self.units, "floor_met": self.met(state),
                "counts_probed": self.count_probed, "stop_reason": state.stop_reason.value if state.stop_reason else None}
