"""Certaindex signals: agreement of answers, reward scores, and long-chain-of-thought probes."""
from __future__ import annotations

import math

import pytest

from scheduler_backend.certaindex import (
    HEDGE_WORDS,
    entropy_certaindex,
    is_hedging,
    probe_certaindex,
    reward_certaindex,
    weighted_agreement,
)


def test_entropy_certaindex_is_one_when_all_agree_and_zero_when_all_differ():
    assert entropy_certaindex(["1/2", "0.5", "\\frac{1}{2}", "0.50"]) == pytest.approx(1.0)
    assert entropy_certaindex(["1", "2", "3", "4"]) == pytest.approx(0.0)


def test_entropy_certaindex_needs_two_answers():
    assert entropy_certaindex([]) == 0.0
    assert entropy_certaindex(["5"]) == 0.0


def test_entropy_certaindex_counts_each_missing_answer_as_disagreement():
    assert entropy_certaindex([None, None, None]) == pytest.approx(0.0)
    assert entropy_certaindex(["5", None]) == pytest.approx(0.0)
    assert entropy_certaindex(["5", "5", None]) < entropy_certaindex(["5", "5", "5"])
    assert entropy_certaindex(["5", "5", None, None]) == pytest.approx(entropy_certaindex(["5", "5", "6", "7"]))


def test_entropy_certaindex_reads_the_same_at_4_and_16_samples():
    """Pattern checked: 75% of the samples agree and every dissenter gives its own answer (wrong
    answers scatter). Normalizing by log(n) keeps the two within 0.1 (about 0.59 and 0.67), where the
    raw entropy differs by 0.35 nats."""
    four = entropy_certaindex(["9"] * 3 + ["1"])
    sixteen = entropy_certaindex(["9"] * 12 + ["1", "2", "3", "4"])
    assert 0.5 < four < 0.7 and 0.5 < sixteen < 0.75
    assert abs(four - sixteen) < 0.1
    raw_four, raw_sixteen = (1 - four) * math.log(4), (1 - sixteen) * math.log(16)
    assert raw_sixteen - raw_four > 0.3
    assert entropy_certaindex(["9"] * 14 + ["1", "2"]) > sixteen > entropy_certaindex(["9"] * 8 + list("12345678"))


def test_reward_certaindex_is_the_best_score_clipped():
    assert reward_certaindex([0.2, 0.9, 0.5]) == pytest.approx(0.9)
    assert reward_certaindex([1.7, 0.1]) == 1.0
    assert reward_certaindex([-0.3]) == 0.0
    assert reward_certaindex([]) == 0.0


def test_weighted_agreement_is_the_leading_answers_share_of_weight():
    assert weighted_agreement(["4", "4.0", "5"], [0.1, 0.2, 0.7]) == pytest.approx(0.7)
    assert weighted_agreement(["4", "4.0", "5"], [0.3, 0.3, 0.4]) == pytest.approx(0.6)
    assert weighted_agreement(["4", None], [0.5, 0.5]) == pytest.approx(0.5)
    assert weighted_agreement([None], [1.0]) == 0.0


def test_probe_certaindex_counts_agreement_over_the_whole_window():
    assert probe_certaindex(["7"], window=3) == pytest.approx(1 / 3)
    assert probe_certaindex(["7", "7.0"], window=3) == pytest.approx(2 / 3)
    assert probe_certaindex(["7", "7", "7"], window=3) == pytest.approx(1.0)
    assert probe_certaindex(["5", "5", "7", "7", "7"], window=3) == pytest.approx(1.0)
    assert probe_certaindex(["7", "7", "5"], window=3) == pytest.approx(1 / 3)
    assert probe_certaindex(["7", None, "7"], window=3) == pytest.approx(2 / 3)


def test_probe_certaindex_without_a_latest_answer_is_zero():
    assert probe_certaindex([], window=2) == 0.0
    assert probe_certaindex(["7", "7", None], window=2) == 0.0
    with pytest.raises(ValueError):
        probe_certaindex(["7"], window=0)


@pytest.mark.parametrize("text", ["Wait, let me check.", "HMM.", "but then", "Okay so", "No.", "hold on"])
def test_hedging_words_are_found(text):
    assert is_hedging(text)


@pytest.mark.parametrize("text", ["Press the button", "nothing else", "I know", "butter", "a holder", "okayish",
                                  "The answer is 5", ""])
def test_hedging_matches_whole_words_only(text):
    assert not is_hedging(text)


def test_hedge_words_are_dynasors_list():
    assert HEDGE_WORDS == ("wait", "hold", "but", "okay", "no", "hmm")
