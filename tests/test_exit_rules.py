import numpy as np
import pytest

from scorer.exit_rules import (
    EntropyRule,
    ExitRule,
    FixedHeadRule,
    MaxProbRule,
    PatienceRule,
    RatioTrendRule,
    exit_points,
    rule_from_dict,
)


def test_ratio_trend_needs_confidence_agreement_and_rising_trend():
    rule = RatioTrendRule(threshold=4.0)  # odds >= 4 (p >= 0.8) or <= 1/4 (p <= 0.2)
    probs = np.array([
        [0.70, 0.85],  # confident, same class, rising -> exit
        [0.30, 0.85],  # confident but the class flipped -> stay
        [0.95, 0.85],  # confident, same class, but confidence fell -> stay
        [0.60, 0.70],  # agreeing and rising but not confident -> stay
        [0.15, 0.10],  # confident negative, rising -> exit
    ])
    assert rule.decide(probs).tolist() == [True, False, False, False, True]


def test_ratio_trend_first_head():
    first = np.array([[0.99], [0.5]])
    assert RatioTrendRule(threshold=4.0).decide(first).tolist() == [False, False]
    assert RatioTrendRule(threshold=4.0, first_head_exits=True).decide(first).tolist() == [True, False]


def test_max_prob_and_entropy():
    probs = np.array([[0.5, 0.95], [0.5, 0.04], [0.5, 0.6]])
    assert MaxProbRule(0.9).decide(probs).tolist() == [True, True, False]
    # entropy of 0.95 ~ 0.199 nats, of 0.04 ~ 0.168, of 0.6 ~ 0.673
    assert EntropyRule(0.2).decide(probs).tolist() == [True, True, False]
    assert EntropyRule(0.18).decide(probs).tolist() == [False, True, False]


def test_patience_counts_agreeing_heads():
    rule = PatienceRule(patience=3)
    assert rule.decide(np.array([[0.6, 0.7]])).tolist() == [False]  # too few heads yet
    probs = np.array([[0.6, 0.7, 0.9], [0.6, 0.4, 0.9], [0.1, 0.2, 0.3]])
    assert rule.decide(probs).tolist() == [True, False, True]


def test_exit_points_replays_a_rule_over_all_heads():
    probs = np.array([[0.55, 0.95, 0.99, 0.99], [0.5, 0.5, 0.5, 0.5], [0.05, 0.5, 0.5, 0.5]])
    assert exit_points(probs, MaxProbRule(0.9)).tolist() == [1, 3, 0]
    assert exit_points(probs, ExitRule()).tolist() == [3, 3, 3]
    assert exit_points(probs, FixedHeadRule(head=2)).tolist() == [2, 2, 2]


@pytest.mark.parametrize("rule", [RatioTrendRule(3.0, True), MaxProbRule(0.8), EntropyRule(0.4), PatienceRule(2),
                                  FixedHeadRule(1), ExitRule()])
def test_rules_round_trip_through_dicts(rule):
    assert rule_from_dict(rule.to_dict()) == rule
