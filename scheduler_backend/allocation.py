"""Intra-program allocation: how much compute one program gets, decided from its certaindex.

A policy (frozen, with a JSON form the server loads; the same object in `dynasor replay` and
`dynasor calibrate`) starts one `Allocation` per program. The program reports to it after every step
result (`verdict`: stop now, and why, or go on) and asks it how many knob units it still expects to
spend (`predicted_remaining`, the scheduler's job size). An allocation is per program because some
policies remember: the curve sets a program's budget once, at the detection step, and holds it to
that budget whatever certaindex does later.

Each policy's stopping rule is written once, over arrays of consults (`decide`): a replay judges
thousands of recorded programs in one call, and a live program is judged by the same lines on its
own history. The policies are the Dynasor paper's allocation strategies:

  uniform    a fixed budget, never stops early (what users run without Dynasor)
  threshold  stop when certaindex >= settle, checked at the detection step and then at every
             consult (check_every=1), at most once per check_every knob units, or never again
             (check_every=None)
  curve      at the detection step the fitted curve turns certaindex into the program's total
             budget, which is then enforced; dynamic=True re-reads it from the current certaindex
             at every consult

Threshold and curve can also cut a hopeless program: certaindex still <= hopeless at hopeless_step
or later.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
from numpy.typing import NDArray

from scheduler_backend.budget_curve import Curve

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Codes = NDArray[np.int8]


class Verdict(str, Enum):
    """What a policy says after a consult; SETTLED and HOPELESS share StopReason's values."""

    CONTINUE = "continue"
    SETTLED = "settled"
    HOPELESS = "hopeless"


VERDICTS: tuple[Verdict, ...] = (Verdict.CONTINUE, Verdict.SETTLED, Verdict.HOPELESS)  # decide()'s codes


class AllocationPolicy(abc.ABC):
    """A kind of allocation with its settings: judges every program it starts alike."""

    kind: ClassVar[str]

    def start(self, budget: int) -> Allocation:
        """A fresh allocation for one program of `budget` knob units."""
        return Allocation(self, budget)

    @abc.abstractmethod
    def decide(self, certaindex: Floats, steps: Ints, budget: Ints) -> Codes:
        """Verdict codes (indices into VERDICTS) of shape (programs, consults) for programs whose
        consults saw `certaindex` after `steps` knob units (each row nondecreasing), under budgets
        of shape (programs,). Column t depends on columns <= t only, because a live program is
        judged before its later consults exist; a replay stops each row at its first nonzero code."""

    @abc.abstractmethod
    def expected(self, allocation: Allocation, certaindex: float, steps: int) -> float:
        """Knob units the program is still expected to spend, before clipping to what is left."""


class Allocation:
    """One program's allocation: its policy, its budget and the consults it has had."""

    def __init__(self, policy: AllocationPolicy, budget: int):
        if budget < 1:
            raise ValueError(f"budget: must be >= 1, got {budget}")
        self.policy = policy
        self.budget = budget
        self.certaindex: list[float] = []
        self.steps: list[int] = []
        self.last = Verdict.CONTINUE

    def verdict(self, certaindex: float, steps: int) -> Verdict:
        """Take a consult (the program's certaindex after `steps` knob units) and say whether to stop."""
        self.certaindex.append(float(certaindex))
        self.steps.append(int(steps))
        codes = self.policy.decide(np.array([self.certaindex], dtype=np.float64), np.array([self.steps], dtype=np.int64),
                                   np.array([self.budget], dtype=np.int64))
        self.last = VERDICTS[int(codes[0, -1])]
        return self.last

    def first_at(self, step: int) -> tuple[int, float] | None:
        """(steps, certaindex) of the first consult at or past `step`; None while there is none."""
        return next(((s, c) for s, c in zip(self.steps, self.certaindex) if s >= step), None)

    def predicted_remaining(self, certaindex: float, steps: int) -> float:
        """Knob units still expected, in [0, budget - steps]: the scheduler's job size."""
        if self.last is not Verdict.CONTINUE:
            return 0.0
        left = float(max(self.budget - steps, 0))
        return min(left, max(0.0, self.policy.expected(self, certaindex, steps)))


def _check_unit(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")


def _check_step(name: str, value: Any, *, optional: bool = False, minimum: int = 1) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}{' or null' if optional else ''}, got {value!r}")


def _check_hopeless(policy: ThresholdPolicy | CurvePolicy) -> None:
    """Shared checks of the hopeless cut; hopeless_step defaults to twice the detection step."""
    _check_unit("hopeless", policy.hopeless, optional=True)
    _check_step("hopeless_step", policy.hopeless_step, optional=True, minimum=policy.detect_step)
    if policy.hopeless is None and policy.hopeless_step is not None:
        raise ValueError("hopeless_step: set without hopeless, so it would never apply")
    if policy.hopeless is not None and policy.hopeless_step is None:
        object.__setattr__(policy, "hopeless_step", 2 * policy.detect_step)


def _previous(values: Ints, fill: int) -> Ints:
    """Each consult's previous column (`fill` before the first)."""
    out: Ints = np.concatenate([np.full((values.shape[0], 1), fill, dtype=values.dtype), values[:, :-1]], axis=1)
    return out


def _codes(settled: NDArray[np.bool_], certaindex: Floats, steps: Ints, hopeless: float | None,
           hopeless_step: int | None) -> Codes:
    """SETTLED where settled, else HOPELESS where the cut applies, else CONTINUE."""
    cut = np.zeros_like(settled)
    if hopeless is not None and hopeless_step is not None:
        cut = (steps >= hopeless_step) & (certaindex <= hopeless)
    codes: Codes = np.where(settled, 1, np.where(cut, 2, 0)).astype(np.int8)
    return codes


def _whole(units: Floats) -> Floats:
    """Knob units rounded to whole ones (halves up)."""
    out: Floats = np.floor(units + 0.5)
    return out


@dataclass(frozen=True)
class UniformPolicy(AllocationPolicy):
    """A fixed budget: every program runs to its cap, whatever its certaindex."""

    kind: ClassVar[str] = "uniform"

    def decide(self, certaindex: Floats, steps: Ints, budget: Ints) -> Codes:
        return np.zeros(np.shape(certaindex), dtype=np.int8)

    def expected(self, allocation: Allocation, certaindex: float, steps: int) -> float:
        return float(allocation.budget - steps)


@dataclass(frozen=True)
class ThresholdPolicy(AllocationPolicy):
    """Stop when certaindex reaches `settle` at a check: the detection step, then every consult
    (`check_every`=1), the first consult in each new stretch of `check_every` knob units, or none
    (None: decided once, at detection).

    The scheduler's job size: before detection `extra_fraction` of the budget after detection (the
    share programs spent there in calibration; 1.0 = to the cap); after it, `predictor` (a curve
    calibrated on what programs still spent at each certaindex) or, uncalibrated, the budget left
    shrunk in proportion to how close certaindex is to `settle`.
    """

    kind: ClassVar[str] = "threshold"
    settle: float = 0.8
    detect_step: int = 4
    hopeless: float | None = None
    hopeless_step: int | None = None
    extra_fraction: float = 1.0
    check_every: int | None = 1
    predictor: Curve | None = None

    def __post_init__(self) -> None:
        _check_unit("settle", self.settle)
        _check_step("detect_step", self.detect_step)
        _check_step("check_every", self.check_every, optional=True)
        _check_hopeless(self)
        if self.hopeless is not None and self.hopeless >= self.settle:
            raise ValueError(f"hopeless: must be below settle ({self.settle}), got {self.hopeless}")
        _check_unit("extra_fraction", self.extra_fraction)
        if self.predictor is not None and not isinstance(self.predictor, Curve):
            raise ValueError(f"predictor: must be a curve {{\"a\", \"b\"}} or null, got {self.predictor!r}")

    def decide(self, certaindex: Floats, steps: Ints, budget: Ints) -> Codes:
        detected = steps >= self.detect_step
        if self.check_every is None:
            checked = detected & ~_previous(detected.astype(np.int64), 0).astype(bool)
        elif self.check_every == 1:
            checked = detected
        else:
            stretch = (steps - self.detect_step) // self.check_every  # negative before detection
            checked = detected & (stretch > _previous(stretch, -1))
        return _codes(checked & (certaindex >= self.settle), certaindex, steps, self.hopeless, self.hopeless_step)

    def expected(self, allocation: Allocation, certaindex: float, steps: int) -> float:
        budget = allocation.budget
        if steps < self.detect_step:
            detect = min(self.detect_step, budget)
            return (detect - steps) + self.extra_fraction * (budget - detect)
        if self.check_every is None and allocation.first_at(self.detect_step) is not None:
            return float(budget - steps)  # decided at detection to go on: it runs to the cap
        if self.predictor is not None:
            return self.predictor.at(certaindex)
        return (budget - steps) * (1.0 - min(certaindex / self.settle, 1.0)) if self.settle > 0 else 0.0


@dataclass(frozen=True)
class CurvePolicy(AllocationPolicy):
    """Give each program the compute its certaindex predicts (the paper's curve-fitting
    allocation): at the detection step the program's total budget becomes the steps spent there plus
    a * exp(-b * certaindex), in whole knob units, at most the cap; it stops once it has spent that,
    even if certaindex drops later. `dynamic` re-predicts that total from the current certaindex at
    every consult (the detection step's steps stay the base). `settle` (the paper's refined
    strategy): a program whose certaindex at the detection step is already at least this stops
    there, whatever the curve would still give it, so agreeing first samples cost no more at any budget.
    """

    kind: ClassVar[str] = "curve"
    a: float
    b: float
    detect_step: int = 4
    hopeless: float | None = None
    hopeless_step: int | None = None
    dynamic: bool = False
    settle: float | None = None

    def __post_init__(self) -> None:
        Curve(self.a, self.b)
        _check_step("detect_step", self.detect_step)
        _check_unit("settle", self.settle, optional=True)
        if not isinstance(self.dynamic, bool):
            raise ValueError(f"dynamic: must be true or false, got {self.dynamic!r}")
        _check_hopeless(self)

    @property
    def curve(self) -> Curve:
        """Knob units after the detection step, from certaindex."""
        return Curve(self.a, self.b)

    def decide(self, certaindex: Floats, steps: Ints, budget: Ints) -> Codes:
        detected = steps >= self.detect_step
        rows, first = np.arange(steps.shape[0]), detected.argmax(axis=1)
        base = steps[rows, first][:, None]
        read = certaindex if self.dynamic else certaindex[rows, first][:, None]
        cap = budget[:, None]
        total = np.minimum(cap, base + _whole(self.curve(read)))
        settled = detected & (steps >= total) & (total < cap)
        if self.settle is not None:
            at_detection = detected & (np.arange(steps.shape[1])[None, :] == first[:, None])
            settled |= at_detection & (certaindex >= self.settle)
        return _codes(settled, certaindex, steps, self.hopeless, self.hopeless_step)

    def expected(self, allocation: Allocation, certaindex: float, steps: int) -> float:
        detection = allocation.first_at(self.detect_step)
        if detection is None:
            return max(self.detect_step - steps, 0) + self.curve.at(certaindex)
        base, at_detection = detection
        if self.settle is not None and at_detection >= self.settle:
            return 0.0
        read = certaindex if self.dynamic else at_detection
        return base + float(_whole(self.curve(read))) - steps

    @classmethod
    def fit(cls, certaindex: Sequence[float] | Floats, remaining: Sequence[float] | Floats, *, detect_step: int = 4,
            hopeless: float | None = None, hopeless_step: int | None = None, dynamic: bool = False,
            settle: float | None = None) -> CurvePolicy:
        """The curve fitted to (certaindex at detection, knob units programs still needed) pairs;
        ValueError when it cannot be (see Curve.fit)."""
        curve = Curve.fit(certaindex, remaining)
        return cls(a=curve.a, b=curve.b, detect_step=detect_step, hopeless=hopeless, hopeless_step=hopeless_step,
                   dynamic=dynamic, settle=settle)


_KINDS: dict[str, type[AllocationPolicy]] = {cls.kind: cls for cls in (UniformPolicy, ThresholdPolicy, CurvePolicy)}
_REQUIRED = {"curve": ("a", "b")}


def _fields(cls: type[AllocationPolicy]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cast(Any, cls)))


def policy_to_dict(policy: AllocationPolicy) -> dict[str, Any]:
    """The JSON form: {"kind": "uniform" | "threshold" | "curve", <the policy's fields>}; a
    threshold's predictor is {"a", "b"} or null."""
    if type(policy) not in _KINDS.values():
        raise TypeError(f"policy: no JSON form for {type(policy).__name__}")
    out: dict[str, Any] = {"kind": policy.kind}
    for name in _fields(type(policy)):
        value = getattr(policy, name)
        out[name] = dataclasses.asdict(value) if isinstance(value, Curve) else value
    return out


def _predictor(value: Any) -> Curve | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"predictor: expected an object {{\"a\", \"b\"}} or null, got {value!r}")
    unknown = sorted(set(value) - {"a", "b"})
    missing = [k for k in ("a", "b") if k not in value]
    if unknown or missing:
        raise ValueError(f"predictor.{(unknown or missing)[0]}: {'unknown field' if unknown else 'required'} (fields: a, b)")
    try:
        return Curve(value["a"], value["b"])
    except ValueError as exc:
        raise ValueError(f"predictor.{exc}") from None


def policy_from_dict(d: dict[str, Any]) -> AllocationPolicy:
    """Inverse of `policy_to_dict`; a ValueError names the offending field. Fields left out take
    their defaults, so files written before a field existed still load."""
    if not isinstance(d, dict):
        raise ValueError(f"policy: expected a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    known = _fields(cls)
    unknown = sorted(set(d) - {"kind", *known})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field for a {kind} policy (known: {', '.join(known) or 'none'})")
    missing = [key for key in _REQUIRED.get(kind, ()) if key not in d]
    if missing:
        raise ValueError(f"{missing[0]}: required for a {kind} policy")
    values = {key: d[key] for key in known if key in d}
    if "predictor" in values:
        values["predictor"] = _predictor(values["predictor"])
    policy: AllocationPolicy = cast(Any, cls)(**values)
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
        if doc is None:
            raise ValueError(f"{where}: not written (see the calibration's notes)")
    try:
        return policy_from_dict(doc)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


CALIBRATION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def load_calibration(spec: str, calibration_dir: str | Path | None) -> AllocationPolicy:
    """A shipped calibration by name, as config.pbtxt and requests name one: NAME takes its
    "policy" entry, NAME:curve its fitted curve. A ValueError says what is wrong with the name,
    the file or the policy in it (no `calibration_dir`: there is none); the caller prefixes the
    field it came from."""
    name, _, entry = spec.partition(":")
    if not CALIBRATION_NAME.match(name) or entry not in ("", "policy", "curve"):
        raise ValueError("expected NAME or NAME:curve, NAME made of letters, digits, '._-'")
    path = Path(calibration_dir) / f"{name}.json" if calibration_dir else None
    if path is None or not path.is_file():
        raise ValueError(f"no calibration named {name!r} on this server")
    return load_policy(path, entry or "policy")
