"""The concurrency controller on synthetic throughput curves, closed loop: each window runs the
programs it allows (enough waiting), each keeping the same sequences in flight."""
from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from scheduler_backend.capacity import ConcurrencyController

SEQS_PER_PROGRAM = 4.0


KNEE = 12 * math.log(10)  # 27.6 sequences reach 90% of the best


def saturating(seqs: float) -> float:
    """Tokens/s that grows with the batch and levels off."""
    return 1000.0 * (1 - math.exp(-seqs / 12))


def linear(seqs: float) -> float:
    return 10.0 * seqs


def drive(controller: ConcurrencyController, curve: Callable[[float], float], windows: int,
          noise: float = 0.0, seed: int = 0) -> list[int]:
    """max_running after each window."""
    rng = random.Random(seed)
    history = []
    for _ in range(windows):
        running = controller.max_running
        seqs = running * SEQS_PER_PROGRAM
        controller.observe(seqs, curve(seqs) * (1 + rng.uniform(-noise, noise)), running)
        history.append(controller.max_running)
    return history


def test_a_cold_start_uses_the_initial_value_until_a_bucket_counts():
    controller = ConcurrencyController(initial_programs=3, min_windows=2)
    assert controller.max_running == 3 and controller.target_seqs() is None
    controller.observe(12.0, 800.0, 3)
    assert controller.max_running == 3, "one window is not an estimate yet"
    controller.observe(12.0, 800.0, 3)
    assert controller.max_running > 3, "the only bucket tried is the best: try more"


def test_a_saturating_curve_settles_near_the_knee():
    controller = ConcurrencyController(initial_programs=1)
    history = drive(controller, saturating, 200)
    # sqrt(2) buckets put the knee within one step.
    assert history[-50:] == [history[-1]] * 50, "it settles"
    seqs = history[-1] * SEQS_PER_PROGRAM
    assert KNEE / 2**0.5 <= seqs <= KNEE * 2**0.5 + SEQS_PER_PROGRAM
    assert saturating(seqs) >= 0.85 * max(saturating(s) for s in range(1, 257))


def test_from_a_high_start_it_comes_down_to_the_knee():
    controller = ConcurrencyController(initial_programs=64)
    history = drive(controller, saturating, 200)
    assert history[-50:] == [history[-1]] * 50
    assert KNEE / 2**0.5 <= history[-1] * SEQS_PER_PROGRAM <= KNEE * 2**0.5 + SEQS_PER_PROGRAM


def test_a_linear_curve_keeps_growing_to_the_ceiling():
    controller = ConcurrencyController(initial_programs=1, max_seqs=200)
    history = drive(controller, linear, 100)
    assert history == sorted(history), "every step up pays, so it never steps down"
    assert history[-1] == 200 // SEQS_PER_PROGRAM


def test_a_noisy_curve_does_not_oscillate_wildly():
    best = saturating(256)
    for seed in range(10):
        controller = ConcurrencyController(initial_programs=1)
        history = drive(controller, saturating, 400, noise=0.05, seed=seed)
        late = history[100:]
        assert max(late) <= 2 * min(late), f"seed {seed}: {sorted(set(late))}"
        changes = sum(a != b for a, b in zip(late, late[1:]))
        assert changes <= 3, f"seed {seed}: {changes} changes in {len(late)} windows"
        assert saturating(min(late) * SEQS_PER_PROGRAM) >= 0.8 * best


def test_programs_follow_the_sequences_each_keeps_in_flight():
    """One program in flight at 8 sequences: try 8 x sqrt(2); at least that many, so two programs
    of 8, or six of 2."""
    wide, narrow = ConcurrencyController(min_windows=1), ConcurrencyController(min_windows=1)
    wide.observe(8.0, 100.0, 1)
    narrow.observe(8.0, 100.0, 4)
    assert wide.target_seqs() == narrow.target_seqs() == pytest.approx(8.0 * 2**0.5)
    assert (wide.max_running, narrow.max_running) == (2, 6)


def test_a_flat_curve_probes_down_to_the_floor():
    controller = ConcurrencyController(initial_programs=16, min_seqs=2.0)
    history = drive(controller, lambda seqs: 500.0, 100)
    assert history[-1] == 1, "2 sequences would do; one program keeps 4 in flight"
    assert history[1] > 16, "a single bucket tried is the best one: it looks above first"
    assert history[2:] == sorted(history[2:], reverse=True)


def test_the_ceiling_bounds_the_programs():
    controller = ConcurrencyController(initial_programs=1, max_seqs=10.0, min_windows=1)
    controller.observe(4.0, 100.0, 1)
    controller.observe(8.0, 200.0, 2)
    assert controller.target_seqs() == 10.0
    assert controller.max_running == 2, "a third program of 4 would pass 10 sequences"


def test_windows_without_sequences_in_flight_are_ignored():
    controller = ConcurrencyController(initial_programs=5, min_windows=1)
    controller.observe(0.0, 0.0, 0)
    controller.observe(float("nan"), 10.0, 2)
    assert controller.target_seqs() is None and controller.seqs_per_program is None


@pytest.mark.parametrize("kwargs, field", [
    ({"initial_programs": 0}, "initial_programs"),
    ({"min_seqs": 0}, "min_seqs"),
    ({"min_seqs": 10, "max_seqs": 5}, "min_seqs"),
    ({"knee": 1.5}, "knee"),
    ({"ratio": 1.05}, "ratio"),
    ({"min_gain": -0.1}, "min_gain"),
    ({"alpha": 0}, "alpha"),
    ({"min_windows": 0}, "min_windows"),
])
def test_bad_parameters_name_the_field(kwargs: dict, field: str):
    with pytest.raises(ValueError, match=f"^{field}"):
        ConcurrencyController(**kwargs)
