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
a head that reads them starts from the baseline's information rather than below it. Then the five content-match
numbers of :mod:`scorer.content` (they need a :class:`~scorer.content.TextEmbeddings`), then the collaborative
match of the candidate with the user's own reactions (:data:`COLLAB_FEATURES`): with :math:`c` the candidate's
LightGCN vector and :math:`\bar l`, :math:`\bar d` the mean cosines of :math:`c` with the vectors of the items
the user's recent reactions liked and disliked (item-to-item collaborative filtering on the fresh graph), and
:math:`S = \sum_t (y_t - \hat p_t)` the user's *like surprise* over its :math:`n` recent reactions: label minus
the reacted item's smoothed like rate among everyone else's reactions, read from the item payloads at scoring
time (so it depends only on the store's state, never on the order clicks were folded in):

==========================  =================================================================================
``graph_liked_match``       :math:`\bar l` (0 without a liked recent item that has a vector, or no candidate vector)
``graph_disliked_match``    :math:`\bar d` (likewise)
``graph_match_margin``      :math:`\bar l - \bar d` when both exist, else 0
``user_surprise``           :math:`S / (n + k)`: how much more (or less) the user likes than the items' own rates
                            predict, which a raw user rate confuses with the popularity of what it picked
==========================  =================================================================================

Last, the user's taste for the candidate's brand (:data:`BRAND_FEATURES`: a book's author; from the user payload's
key lists of its latest liked and disliked items, :meth:`scorer.catalogue.BrandIndex.reactions`): with
:math:`s_b` likes in :math:`m_b` reactions to items of the candidate's brand and :math:`r_u` the user's smoothed
rate, :math:`r_b = (s_b + k r_u)/(m_b + k)`:

==========================  =================================================================================
``brand_margin``            :math:`\mathrm{logit}\,r_b - \mathrm{logit}\,r_u` (0 without reactions to the brand or
                            when the candidate's brand is unknown)
``brand_count``             :math:`\ln(1+m_b)`
==========================  =================================================================================

A model with a graph token (:mod:`scorer.model`) also reads :func:`graph_pairs`: per pair the user's and the
candidate's LightGCN vectors scaled to unit length and concatenated, zeros for a missing one (a cold user or item).

Feature sets are prefixes of :data:`ALL_FEATURES` (:data:`FEATURE_SETS`), so a checkpoint's list says which columns
its heads read and older checkpoints keep working. Missing evidence (cold user, unknown item, no retrieval) is the
prior and a zero count, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scorer.content import CONTENT_FEATURES, TextEmbeddings, content_match, texts_of
from scorer.prompt import PromptInputs

FEATURES = ("user_rate", "item_rate", "neighbour_rate", "user_count", "item_count", "neighbour_count", "affinity",
            "has_affinity")
COLLAB_FEATURES = ("graph_liked_match", "graph_disliked_match", "graph_match_margin", "user_surprise")
BRAND_FEATURES = ("brand_margin", "brand_count")
CONTENT_SET = FEATURES + CONTENT_FEATURES
COLLAB_SET = CONTENT_SET + COLLAB_FEATURES
ALL_FEATURES = COLLAB_SET + BRAND_FEATURES
FEATURE_SETS = (FEATURES, CONTENT_SET, COLLAB_SET, ALL_FEATURES)  # what a checkpoint's heads may read
STRENGTH = 5.0


def smoothed_rate(liked: float, reacted: float, prior: float, strength: float = STRENGTH) -> float:
    """:math:`r = (s + k p_0)/(m + k)`."""
    return (liked + strength * prior) / (reacted + strength)


def smoothed_logit(liked: float, reacted: float, prior: float, strength: float = STRENGTH) -> float:
    r = smoothed_rate(liked, reacted, prior, strength)
    r = min(max(r, 1e-4), 1 - 1e-4)
    return float(np.log(r / (1 - r)))


def features(inputs: PromptInputs, prior: float) -> list[float]:
    user = inputs.rate or (0, 0)
    item = inputs.item_rate or (0, 0)
    nb = (inputs.neighbours.liked, inputs.neighbours.reacted) if inputs.neighbours is not None else (0, 0)
    return [smoothed_logit(*user, prior), smoothed_logit(*item, prior), smoothed_logit(*nb, prior),
            float(np.log1p(user[1])), float(np.log1p(item[1])), float(np.log1p(nb[1])),
            float(inputs.affinity or 0.0), float(inputs.affinity is not None)]


def like_surprise(reactions: Sequence[tuple[int, int, int]], prior: float) -> float:
    r""":math:`\sum (y - r)/(n + k)` over ``(label, others' likes, others' reactions)``, :math:`r` the smoothed
    rate before the logit."""
    expected = [smoothed_rate(liked, reacted, prior) for _, liked, reacted in reactions]
    return float(sum(y for y, _, _ in reactions) - sum(expected)) / (len(reactions) + STRENGTH)


def collaborative(inputs: PromptInputs, prior: float) -> list[float]:
    """The four :data:`COLLAB_FEATURES` of one pair."""
    liked, disliked = inputs.graph_match or (None, None)
    return [liked or 0.0, disliked or 0.0, liked - disliked if liked is not None and disliked is not None else 0.0,
            like_surprise(inputs.surprise or (), prior)]


def brand(inputs: PromptInputs, prior: float) -> list[float]:
    """The two :data:`BRAND_FEATURES` of one pair."""
    liked, reacted = inputs.brand_rate or (0, 0)
    if not reacted:
        return [0.0, 0.0]
    user = inputs.rate or (0, 0)
    return [smoothed_logit(liked, reacted, smoothed_rate(*user, prior)) - smoothed_logit(*user, prior),
            float(np.log1p(reacted))]


def needs_embeddings(names: Sequence[str]) -> bool:
    """Whether heads reading ``names`` need item-text embeddings (the content-match columns)."""
    return len(names) > len(FEATURES)


def feature_matrix(inputs: Sequence[PromptInputs], prior: float, names: Sequence[str] = FEATURES,
                   embeddings: TextEmbeddings | None = None) -> np.ndarray:
    """``(n, len(names))`` float32, one row per pair; ``names`` is one of :data:`FEATURE_SETS` (the content-match
    columns need ``embeddings``)."""
    names = tuple(names)
    if names not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {names}; expected a prefix of {ALL_FEATURES} in {FEATURE_SETS}")
    content = needs_embeddings(names)
    if content:
        if embeddings is None:
            raise ValueError("the content-match features need item-text embeddings")
        embeddings.ensure(texts_of(inputs))
    rows = []
    for x in inputs:
        row = features(x, prior)
        if content:
            row += content_match(x, embeddings)
        if len(names) >= len(COLLAB_SET):
            row += collaborative(x, prior)
        if names == ALL_FEATURES:
            row += brand(x, prior)
        rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(len(inputs), len(names))


def graph_pairs(inputs: Sequence[PromptInputs], dim: int) -> np.ndarray:
    """``(n, 2·dim)`` float32: per pair ``[u/|u|; v/|v|]`` of the user's and the candidate's LightGCN vectors, zeros
    for a missing one or one of another length (a graph checkpoint of another dimension)."""
    out = np.zeros((len(inputs), 2 * dim), dtype=np.float32)
    for row, x in enumerate(inputs):
        for side, vector in enumerate(x.graph_vectors or (None, None)):
            if vector is not None and len(vector) == dim:
                v = np.asarray(vector, dtype=np.float64)
                out[row, side * dim:(side + 1) * dim] = v / (np.linalg.norm(v) + 1e-12)
    return out
