"""Intra-program allocation: how much compute one program gets, decided from its certaindex.

A program asks its policy after every step result whether to go on (`verdict`) and how many knob
units it still expects to spend (`predicted_remaining`, the scheduler's job size). Policies are
pure functions of (certaindex, steps, budget), so the server, a trace replay and `calibrate` all
judge a program alike, and they round-trip through a small JSON form the server loads at start.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import OptimizeWarning, curve_fit


class Verdict(str, Enum):
    """What a policy says after a step; SETTLED and HOPELESS share StopReason's values."""

    CONTINUE = "continue"
    SETTLED = "settled"
    HOPELESS = "hopeless"


@runtime_checkable
class AllocationPolicy(Protocol):
    def verdict(self, certaindex: float, steps: int, budget: int) -> Verdict:
        """Stop now (and why) or continue, given the certaindex after `steps` knob units."""
        ...

    def predicted_remaining(self, certaindex: float, steps: int, budget: int) -> float:
        """Knob units the program is still expected to spend, in [0, budget - steps]."""
        ...


def _check_unit(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")


def _check_step(name: str, value: Any, *, optional: bool = False, minimum: int = 1) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_hopeless(hopeless: float | None, hopeless_step: int | None, detect_step: int) -> None:
    _check_unit("hopeless", hopeless, optional=True)
    _check_step("hopeless_step", hopeless_step, optional=True, minimum=detect_step)
    if hopeless is None and hopeless_step is not None:
        raise ValueError("hopeless_step: set without hopeless, so it would never apply")


@dataclass(frozen=True)
class ThresholdPolicy:
    """Stop when the certaindex at/after `detect_step` reaches `settle` (the paper's threshold
    allocation); cut a program whose certaindex is still <= `hopeless` at `hopeless_step`.

    `extra_fraction` is the prior for the scheduler before detection: the expected share of the
    budget after `detect_step` that a program still spends (1.0 = every program runs to the cap;
    `calibrate` measures it on traces).
    """

    settle: float = 0.8
    detect_step: int = 4
    hopeless: float | None = None
    hopeless_step: int | None = None
    extra_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check_unit("settle", self.settle)
        _check_step("detect_step", self.detect_step)
        _check_hopeless(self.hopeless, self.hopeless_step, self.detect_step)
        if self.hopeless is not None and self.hopeless >= self.settle:
            raise ValueError(f"hopeless: must be below settle ({self.settle}), got {self.hopeless}")
        _check_unit("extra_fraction", self.extra_fraction)
        if self.hopeless is not None and self.hopeless_step is None:
            object.__setattr__(self, "hopeless_step", 2 * self.detect_step)

    def verdict(self, certaindex: float, steps: int, budget: int) -> Verdict:
        return _verdict(self, certaindex >= self.settle, certaindex, steps)

    def predicted_remaining(self, certaindex: float, steps: int, budget: int) -> float:
        left = float(max(budget - steps, 0))
        if self.verdict(certaindex, steps, budget) is not Verdict.CONTINUE:
            return 0.0
        if steps >= self.detect_step:
            return left
        detect = min(self.detect_step, budget)
        return max(0.0, min(left, (detect - steps) + self.extra_fraction * (budget - detect)))


def _exp_curve(c: NDArray[np.float64] | np.float64, a: float, b: float) -> NDArray[np.float64]:
    curve: NDArray[np.float64] = a * np.exp(-b * c)
    return curve


@dataclass(frozen=True)
class CurvePolicy:
    """Give each program the compute its certaindex predicts (the paper's curve-fitting
    allocation): remaining = a * exp(-b * certaindex), clipped to [0, budget - steps], re-read
    after every step from detect_step on. SETTLED once less than one knob unit is predicted.
    """

    a: float
    b: float
    detect_step: int = 4
    hopeless: float | None = None
    hopeless_step: int | None = None

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: must be a finite number, got {value!r}")
        if self.a < 0:
            raise ValueError(f"a: must be >= 0, got {self.a}")
        _check_step("detect_step", self.detect_step)
        _check_hopeless(self.hopeless, self.hopeless_step, self.detect_step)
        if self.hopeless is not None and self.hopeless_step is None:
            object.__setattr__(self, "hopeless_step", 2 * self.detect_step)

    def curve(self, certaindex: float) -> float:
        """Predicted remaining knob units before clipping to the budget."""
        return float(_exp_curve(np.float64(certaindex), self.a, self.b))

    def verdict(self, certaindex: float, steps: int, budget: int) -> Verdict:
        return _verdict(self, self.curve(certaindex) < 1.0, certaindex, steps)

    def predicted_remaining(self, certaindex: float, steps: int, budget: int) -> float:
        left = float(max(budget - steps, 0))
        if self.verdict(certaindex, steps, budget) is not Verdict.CONTINUE:
            return 0.0
        return min(left, max(self.detect_step - steps, 0) + self.curve(certaindex))

    @classmethod
    def fit(
        cls,
        certaindex: Sequence[float],
        remaining: Sequence[float],
        *,
        detect_step: int = 4,
        hopeless: float | None = None,
        hopeless_step: int | None = None,
    ) -> CurvePolicy:
        """Least-squares fit of a * exp(-b * c) to (certaindex at detection, knob units the program
        still needed) pairs; b >= 0, since more certainty should never predict more work."""
        c = np.asarray(certaindex, dtype=np.float64)
        r = np.asarray(remaining, dtype=np.float64)
        if c.shape != r.shape or c.ndim != 1:
            raise ValueError(f"certaindex, remaining: need two equal-length 1-D sequences, got {c.shape} and {r.shape}")
        if len(c) < 2:
            raise ValueError(f"certaindex: need at least 2 points to fit a curve, got {len(c)}")
        if not (np.isfinite(c).all() and np.isfinite(r).all()) or (r < 0).any():
            raise ValueError("remaining: values must be finite and >= 0 (and certaindex finite)")
        if not r.any():
            return cls(a=0.0, b=0.0, detect_step=detect_step, hopeless=hopeless, hopeless_step=hopeless_step)
        try:
            with warnings.catch_warnings():  # the covariance is not used; its warning is noise
                warnings.simplefilter("ignore", OptimizeWarning)
                (a, b), _ = curve_fit(
                    _exp_curve, c, r, p0=(float(r.max()) + 1.0, 1.0), bounds=([0.0, 0.0], [np.inf, 100.0])
                )
        except RuntimeError as exc:
            raise ValueError(f"curve fit did not converge on {len(c)} points: {exc}") from exc
        return cls(a=float(a), b=float(b), detect_step=detect_step, hopeless=hopeless, hopeless_step=hopeless_step)


_KINDS: dict[str, type] = {"threshold": ThresholdPolicy, "curve": CurvePolicy}
_KEYS = {
    "threshold": ("settle", "detect_step", "hopeless", "hopeless_step", "extra_fraction"),
    "curve": ("a", "b", "detect_step", "hopeless", "hopeless_step"),
}
_REQUIRED = {"threshold": (), "curve": ("a", "b")}


def _verdict(policy: ThresholdPolicy | CurvePolicy, settled: bool, certaindex: float, steps: int) -> Verdict:
    """The rule both policies share: nothing before the detection step, then settled, then hopeless."""
    if steps < policy.detect_step:
        return Verdict.CONTINUE
    if settled:
        return Verdict.SETTLED
    if policy.hopeless is not None and policy.hopeless_step is not None and steps >= policy.hopeless_step and certaindex <= policy.hopeless:
        return Verdict.HOPELESS
    return Verdict.CONTINUE


def policy_to_dict(policy: AllocationPolicy) -> dict[str, Any]:
    """The JSON form: {"kind": "threshold" | "curve", <the policy's fields>}."""
    for kind, cls in _KINDS.items():
        if isinstance(policy, cls):
            return {"kind": kind, **{key: getattr(policy, key) for key in _KEYS[kind]}}
    raise TypeError(f"policy: no JSON form for {type(policy).__name__}")


def policy_from_dict(d: dict[str, Any]) -> AllocationPolicy:
    """Inverse of `policy_to_dict`; a ValueError names the offending field."""
    if not isinstance(d, dict):
        raise ValueError(f"policy: expected a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    unknown = sorted(set(d) - {"kind", *_KEYS[kind]})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field for a {kind} policy (known: {', '.join(_KEYS[kind])})")
    missing = [key for key in _REQUIRED[kind] if key not in d]
    if missing:
        raise ValueError(f"{missing[0]}: required for a {kind} policy")
    policy: AllocationPolicy = _KINDS[kind](**{key: d[key] for key in _KEYS[kind] if key in d})
    return policy


def load_policy(path: str | Path, which: str = "policy") -> AllocationPolicy:
    """Read a policy file: either a bare policy object, or a `dynasor calibrate` output, from
    which the entry named `which` ("policy" or "curve") is taken."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read policy file: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    where = str(path)
    if isinstance(doc, dict) and "kind" not in doc:
        if which not in doc:
            raise ValueError(f"{path}: no \"kind\" field and no {which!r} entry: not a policy file")
        doc, where = doc[which], f"{path}: {which}"
    try:
        return policy_from_dict(doc)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
