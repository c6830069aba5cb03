"""Numeric evidence of a (user, candidate) pair: the heads' inputs (pure)."""

import numpy as np
import pytest

from scorer.features import FEATURES, feature_matrix, features, smoothed_logit
from scorer.prompt import NeighbourEvidence, PromptInputs


def named(inputs: PromptInputs, prior: float = 0.5) -> dict[str, float]:
    return dict(zip(FEATURES, features(inputs, prior), strict=True))


def test_features_follow_the_documented_formulas():
    f = named(PromptInputs("x", (), NeighbourEvidence(7, 3), (12, 20), (31, 52), 0.25), prior=0.6)
    rate = (12 + 5 * 0.6) / (20 + 5)
    assert f["user_rate"] == pytest.approx(np.log(rate / (1 - rate)))
    assert f["item_rate"] == pytest.approx(smoothed_logit(31, 52, 0.6))
    assert f["neighbour_rate"] == pytest.approx(smoothed_logit(7, 10, 0.6))
    assert (f["user_count"], f["item_count"], f["neighbour_count"]) == pytest.approx(
        (np.log(21), np.log(53), np.log(11)))
    assert (f["affinity"], f["has_affinity"]) == (0.25, 1.0)


def test_missing_evidence_is_the_prior_and_zero_counts():
    prior = 0.7
    f = named(PromptInputs("x"), prior)
    at_prior = np.log(prior / (1 - prior))
    assert f["user_rate"] == f["item_rate"] == f["neighbour_rate"] == pytest.approx(at_prior)
    assert f["user_count"] == f["item_count"] == f["neighbour_count"] == f["affinity"] == f["has_affinity"] == 0.0
    # more likes, higher rate; the same share from more reactions moves further from the prior
    assert smoothed_logit(9, 10, 0.5) > smoothed_logit(5, 10, 0.5)
    assert smoothed_logit(90, 100, 0.5) > smoothed_logit(9, 10, 0.5) > 0


def test_feature_matrix_shape_and_dtype():
    m = feature_matrix([PromptInputs("a"), PromptInputs("b", rate=(1, 2))], 0.5)
    assert m.shape == (2, len(FEATURES)) and m.dtype == np.float32
    assert feature_matrix([], 0.5).shape == (0, len(FEATURES))


def test_collaborative_columns_and_feature_sets():
    from scorer.features import ALL_FEATURES, COLLAB_FEATURES, COLLAB_SET, collaborative

    x = PromptInputs("x", graph_match=(0.6, 0.2), surprise=((1, 3, 15), (0, 0, 0)))
    expected = (1 - (3 + 5 * 0.5) / 20) + (0 - 0.5)  # an item nobody else reacted to is expected at the prior
    assert collaborative(x, 0.5) == pytest.approx([0.6, 0.2, 0.4, expected / (2 + 5)])
    assert collaborative(PromptInputs("x", graph_match=(0.6, None)), 0.5) == pytest.approx([0.6, 0.0, 0.0, 0.0])
    assert collaborative(PromptInputs("x"), 0.5) == [0.0, 0.0, 0.0, 0.0]  # cold: no match, no surprise
    assert COLLAB_SET[-len(COLLAB_FEATURES):] == COLLAB_FEATURES and ALL_FEATURES[:len(COLLAB_SET)] == COLLAB_SET
    with pytest.raises(ValueError, match="unknown feature set"):
        feature_matrix([x], 0.5, ("user_rate",))
    with pytest.raises(ValueError, match="embeddings"):
        feature_matrix([x], 0.5, ALL_FEATURES)


def test_brand_margin_is_the_users_rate_on_the_brand_against_its_rate_overall():
    from scorer.features import brand, smoothed_logit

    user = (6, 10)  # likes 6 of 10 overall; of this author's books it liked 3 of 3
    x = PromptInputs("x", rate=user, brand_rate=(3, 3))
    r_u = (6 + 5 * 0.5) / (10 + 5)
    margin = np.log((3 + 5 * r_u) / (3 + 5) / (1 - (3 + 5 * r_u) / (3 + 5))) - smoothed_logit(6, 10, 0.5)
    assert brand(x, 0.5) == pytest.approx([margin, np.log(4)])
    assert brand(x, 0.5)[0] > 0 > brand(PromptInputs("x", rate=user, brand_rate=(0, 3)), 0.5)[0]
    for unknown in (PromptInputs("x", rate=user), PromptInputs("x", rate=user, brand_rate=(0, 0))):
        assert brand(unknown, 0.5) == [0.0, 0.0]  # no brand, or none of its items seen: no evidence
