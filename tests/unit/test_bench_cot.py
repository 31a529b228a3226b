"""The Dynasor-CoT replay of benchmarks/bench_cot.py: where an effort preset stops a recorded chain."""
from __future__ import annotations

import pytest

from benchmarks.bench_cot import replay, stop_point


def chain(probes, hedges=None, gold="7", answer="7", chunk=64, probe=10) -> dict:
    return {"probes": probes, "hedges": hedges or [False] * len(probes), "chunk_tokens": [chunk] * (len(probes) + 1),
            "probe_tokens": [probe] * len(probes), "answer": answer, "gold": gold}


def test_a_window_stops_at_the_first_chunk_whose_last_probes_agree() -> None:
    c = chain(["5", "7", "7", "7", "9"])
    assert stop_point(c, 2) == (2, "7")
    assert stop_point(c, 3) == (3, "7")
    assert stop_point(c, 4) == (None, None)


def test_a_hedging_probe_or_a_missing_answer_keeps_the_chain_going() -> None:
    assert stop_point(chain(["7", "7", "7"], hedges=[False, True, False]), 2) == (None, None)
    assert stop_point(chain([None, None, "7", "7"]), 2) == (3, "7")


def test_replay_counts_chunks_and_probes_up_to_the_stop_and_everything_when_it_never_stops() -> None:
    early = chain(["7", "7", "3", "3"], answer="3")  # stops at chunk 1 with "7" (right); the full chain says 3
    never = chain(["1", "2", "3"], answer="7")  # never agrees: runs to its end, its own answer
    r = replay([early, never], 2)
    assert r["tokens"] == pytest.approx(((2 * 64 + 2 * 10) + (4 * 64 + 3 * 10)) / 2)
    assert r["accuracy"] == 1.0 and r["cut"] == 0.5
