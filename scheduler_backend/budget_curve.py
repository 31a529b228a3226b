"""The fitted curve from certaindex to compute: a * exp(-b * certaindex) knob units. Curve-fitting
allocation gives a program this many units beyond its detection step; a threshold policy can carry
one only to predict its job size for the scheduler."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import OptimizeWarning, curve_fit


def _exp(c: NDArray[np.float64], a: float, b: float) -> NDArray[np.float64]:
    with np.errstate(over="ignore"):  # a huge a or a negative b may overflow to inf: clipped by callers
        out: NDArray[np.float64] = a * np.exp(-b * c)
    return out


def check_finite(name: str, value: Any) -> None:
    """A ValueError naming the field unless `value` is a finite number (booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Curve:
    """Knob units as a * exp(-b * certaindex): more certainty, less work (when b > 0)."""

    a: float
    b: float

    def __post_init__(self) -> None:
        check_finite("a", self.a)
        check_finite("b", self.b)
        if self.a < 0:
            raise ValueError(f"a: must be >= 0, got {self.a}")

    def __call__(self, certaindex: ArrayLike) -> NDArray[np.float64]:
        c = np.asarray(certaindex, dtype=np.float64)
        return np.zeros_like(c) if self.a == 0 else _exp(c, self.a, self.b)  # 0 * inf would be NaN

    def at(self, certaindex: float) -> float:
        """The curve at one certaindex, as a float."""
        return float(self(certaindex))

    @classmethod
    def fit(cls, certaindex: Sequence[float] | NDArray[np.float64], units: Sequence[float] | NDArray[np.float64]) -> Curve:
        """Least-squares fit to (certaindex, knob units) pairs, with b >= 0 since more certainty
        should never predict more work. ValueError when the data cannot be fitted (say so and go on
        without the curve: a fit that does not converge is a property of the data, not a crash)."""
        c = np.asarray(certaindex, dtype=np.float64)
        r = np.asarray(units, dtype=np.float64)
        if c.shape != r.shape or c.ndim != 1:
            raise ValueError(f"certaindex, remaining: need two equal-length 1-D sequences, got {c.shape} and {r.shape}")
        if len(c) < 2:
            raise ValueError(f"certaindex: need at least 2 points to fit a curve, got {len(c)}")
        if not (np.isfinite(c).all() and np.isfinite(r).all()) or (r < 0).any():
            raise ValueError("remaining: values must be finite and >= 0 (and certaindex finite)")
        if not r.any():
            return cls(a=0.0, b=0.0)
        try:
            with warnings.catch_warnings():  # the covariance is not used; its warning is noise
                warnings.simplefilter("ignore", OptimizeWarning)
                (a, b), _ = curve_fit(_exp, c, r, p0=(float(r.max()) + 1.0, 1.0), bounds=([0.0, 0.0], [np.inf, 100.0]))
        except RuntimeError as exc:
            raise ValueError(f"curve fit did not converge on {len(c)} points: {exc}") from exc
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"curve fit diverged on {len(c)} points (a={a}, b={b})")
        return cls(a=float(a), b=float(b))
