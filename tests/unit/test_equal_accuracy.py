"""The equal-accuracy comparison of the SLO report: a limit held to the baseline's accuracy stops
where accuracy falls, not only where attainment does."""
from __future__ import annotations

import math

import pytest

from loadtest.equal_accuracy import binomial_se, compare, limit


def row(system: str, rate: float, attainment: float, accuracy: float, scale: float = 2.0, programs: int = 10**14) -> dict:
    """A sweep point; so many programs by default that accuracy has no error to speak of."""
    return {"system": system, "rate": rate, "slo_scale": scale, "attainment_at_floor": attainment, "accuracy": accuracy,
            "programs": programs}


# The baseline holds 90% up to 0.2/s (accuracy 0.55 there); dynasor holds attainment to 0.6/s but
# buys it with accuracy, which falls under 0.55 between 0.3 and 0.4/s.
ROWS = [row("baseline", 0.1, 1.0, 0.60), row("baseline", 0.2, 0.9, 0.55), row("baseline", 0.3, 0.5, 0.30),
        row("dynasor", 0.1, 1.0, 0.60), row("dynasor", 0.2, 1.0, 0.58), row("dynasor", 0.3, 0.98, 0.56),
        row("dynasor", 0.4, 0.95, 0.50), row("dynasor", 0.6, 0.9, 0.40), row("dynasor", 0.8, 0.5, 0.20)]


def test_dynasor_at_the_baselines_accuracy_is_bound_by_accuracy_not_attainment() -> None:
    c = compare(ROWS, "rate", 2.0)
    assert c.baseline.value == pytest.approx(0.2) and c.baseline.accuracy == pytest.approx(0.55)
    assert c.dynasor_any_accuracy.value == pytest.approx(0.6) and c.dynasor_any_accuracy.bound_by == "attainment"
    # accuracy 0.56 at 0.3, 0.50 at 0.4: 0.55 is crossed a sixth of the way
    assert c.dynasor.value == pytest.approx(0.3 + 0.1 / 6) and c.dynasor.bound_by == "accuracy"
    assert c.dynasor.accuracy == pytest.approx(0.55)
    assert c.ratio == pytest.approx((0.3 + 0.1 / 6) / 0.2)


def test_the_slo_scale_sweep_reads_from_loose_to_tight() -> None:
    rows = [row("baseline", 0.2, a, acc, scale=sc) for sc, a, acc in ((4, 1.0, 0.6), (2, 0.95, 0.58), (1, 0.6, 0.3))]
    rows += [row("dynasor", 0.2, a, acc, scale=sc) for sc, a, acc in ((4, 1.0, 0.6), (2, 1.0, 0.59), (1, 0.97, 0.52),
                                                                        (0.5, 0.92, 0.2))]
    c = compare(rows, "slo_scale", 0.2)
    # baseline: 0.95 at scale 2, 0.6 at 1: 90% at 2 - 0.05/0.35
    assert c.baseline.value == pytest.approx(2 - 0.05 / 0.35)
    assert c.dynasor_any_accuracy.value == pytest.approx(0.5) and c.dynasor_any_accuracy.bound_by == "range"
    assert c.dynasor.bound_by == "accuracy" and 1 < c.dynasor.value < 2
    assert c.ratio == pytest.approx(c.baseline.value / c.dynasor.value) and c.ratio > 1


def test_accuracy_within_one_standard_error_of_the_difference_counts_as_equal() -> None:
    """On 100 programs a point, 0.50 against the baseline's 0.55 is within noise (one s.e. of the
    difference is sqrt(2 x 0.55 x 0.45 / 100) = 7.0 points): dynasor then holds to 0.6/s."""
    rows = [dict(r, programs=100) for r in ROWS]
    c = compare(rows, "rate", 2.0)
    assert c.tolerance == pytest.approx((2 * 0.55 * 0.45 / 100) ** 0.5)
    assert c.dynasor.value == pytest.approx(0.4 + 0.2 * (0.50 - (0.55 - c.tolerance)) / (0.50 - 0.40))
    assert c.dynasor.bound_by == "accuracy"


def test_a_system_that_misses_at_the_easiest_point_has_no_limit() -> None:
    rows = [row("baseline", 0.1, 0.5, 0.3), row("baseline", 0.2, 0.2, 0.1), row("dynasor", 0.1, 1.0, 0.6), row("dynasor", 0.2, 1.0, 0.6)]
    c = compare(rows, "rate", 2.0)
    assert c.baseline.value is None and c.ratio is None
    assert limit(rows, "dynasor", "rate", 2.0, accuracy_at_least=0.7).value is None


def test_limits_refuse_unknown_sweeps_and_empty_rows() -> None:
    with pytest.raises(ValueError, match="along"):
        limit(ROWS, "dynasor", "budget", 2.0)
    with pytest.raises(ValueError, match="no rows"):
        limit(ROWS, "dynasor", "rate", 3.0)


def test_binomial_error_of_100_programs_is_at_most_5_points() -> None:
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.6, 400) < 0.025
    assert math.isnan(binomial_se(0.5, 0))
