"""Certaindex against correctness on traces: a certaindex that tracks correctness correlates, one
that does not, does not."""
from __future__ import annotations

import math

from scheduler_backend.certaindex_correlation import certaindex_correlation


def trace(pairs: list[tuple[float, bool]]) -> dict:
    return {"history": [{"certaindex": c, "correct": k} for c, k in pairs]}


def test_a_certaindex_that_tracks_correctness_correlates():
    traces = [trace([(0.1, False), (0.9, True)]), trace([(0.2, False), (0.8, True)]), trace([(0.1, False), (0.3, False)])]
    c = certaindex_correlation(traces)
    assert (c.traces, c.steps) == (3, 6)
    assert c.r_all_steps > 0.9 and c.r_final > 0.9
    assert math.isclose(c.final_right, 0.85) and math.isclose(c.final_wrong, 0.3)
    assert math.isclose(c.accuracy, 2 / 3)


def test_an_inverted_or_constant_certaindex_does_not():
    inverted = [trace([(0.9, False)]), trace([(0.1, True)]), trace([(0.8, False)]), trace([(0.2, True)])]
    assert certaindex_correlation(inverted).r_final < -0.9
    constant = [trace([(0.0, False)]), trace([(0.0, True)]), trace([(0.0, False)])]
    c = certaindex_correlation(constant)
    assert c.r_final is None and c.r_all_steps is None
    unknown = certaindex_correlation([{"history": [{"certaindex": 0.5, "correct": None}]}])
    assert unknown.steps == 0
