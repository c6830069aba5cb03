r"""Numeric evidence of one (user, candidate) pair for the exit heads (pure; the collaborative path "b").

From the same :class:`~scorer.prompt.PromptInputs` the prompt is built from (so training and serving share it),
with the training prior :math:`p_0` (the positive rate of the graph's history) and smoothing strength
:math:`k = 5`, a rate of :math:`s` likes in :math:`m` reactions is :math:`r = (s + k p_0)/(m + k)`:

==================  ==========================================================================================
``user_rate``       :math:`\mathrm{logit}\,r` of the user's likes over its reactions (the prior when cold)
``item_rate``       :math:`\mathrm{logit}\,r` of the candidate's likes over all reactions it received
``neighbour_rate``  :math:`\mathrm{logit}\,r` of the retrieved similar users' likes of the candidate
``user_count``      :math:`\ln(1+m)` of the user's reactions
``item_count``      :math:`\ln(1+m)` of the candidate's reactions
``neighbour_count`` :math:`\ln(1+m)` of the neighbours who reacted to the candidate
``affinity``        cosine of the user's and the candidate's LightGCN vectors (0 when either has none)
``has_affinity``    1 when both vectors exist
==================  ==========================================================================================

These are the classical baseline's inputs (smoothed rates, log counts) plus what retrieval and the graph add, so
a head that reads them starts from the baseline's information rather than below it. With a
:class:`~scorer.content.TextEmbeddings` the five content-match numbers of :mod:`scorer.content` follow
(:data:`ALL_FEATURES`, what checkpoints use by default). Missing evidence (cold user, unknown item, no
retrieval) is the prior and a zero count, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scorer.content import CONTENT_FEATURES, TextEmbeddings, content_match, texts_of
from scorer.prompt import PromptInputs

FEATURES = ("user_rate", "item_rate", "neighbour_rate", "user_count", "item_count", "neighbour_count", "affinity",
            "has_affinity")
ALL_FEATURES = FEATURES + CONTENT_FEATURES
STRENGTH = 5.0


def smoothed_logit(liked: float, reacted: float, prior: float, strength: float = STRENGTH) -> float:
    r = (liked + strength * prior) / (reacted + strength)
    r = min(max(r, 1e-4), 1 - 1e-4)
    return float(np.log(r / (1 - r)))


def features(inputs: PromptInputs, prior: float) -> list[float]:
    user = inputs.rate or (0, 0)
    item = inputs.item_rate or (0, 0)
    nb = (inputs.neighbours.liked, inputs.neighbours.reacted) if inputs.neighbours is not None else (0, 0)
    return [smoothed_logit(*user, prior), smoothed_logit(*item, prior), smoothed_logit(*nb, prior),
            float(np.log1p(user[1])), float(np.log1p(item[1])), float(np.log1p(nb[1])),
            float(inputs.affinity or 0.0), float(inputs.affinity is not None)]


def feature_matrix(inputs: Sequence[PromptInputs], prior: float, embeddings: TextEmbeddings | None = None
                   ) -> np.ndarray:
    """``(n, len(FEATURES))`` float32, one row per pair; ``(n, len(ALL_FEATURES))`` with ``embeddings``."""
    if embeddings is None:
        return np.array([features(x, prior) for x in inputs], dtype=np.float32).reshape(len(inputs), len(FEATURES))
    embeddings.ensure(texts_of(inputs))
    rows = [features(x, prior) + content_match(x, embeddings) for x in inputs]
    return np.array(rows, dtype=np.float32).reshape(len(inputs), len(ALL_FEATURES))
