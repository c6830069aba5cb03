r"""Top-K ranking metrics for the retrieval model (pure).

For each evaluated user with held-out clicked items :math:`T_u` and a ranked list :math:`R_u` of the top
:math:`K` items not in the user's training clicks:

.. math::
    \mathrm{Recall@K} = \frac{|R_u \cap T_u|}{\min(K, |T_u|)}, \qquad
    \mathrm{NDCG@K} = \frac{\sum_{r=1}^{K} [R_{u,r} \in T_u] / \log_2(r+1)}
                            {\sum_{r=1}^{\min(K,|T_u|)} 1 / \log_2(r+1)}

averaged over users (the ``min(K, |T_u|)`` form keeps a perfect ranking at 1).
"""

from __future__ import annotations

import numpy as np


def recall_ndcg(scores: np.ndarray, train_mask: np.ndarray, truth: list[np.ndarray], k: int = 20
                ) -> tuple[float, float]:
    """Mean Recall@k and NDCG@k. ``scores``: (users, items); ``train_mask``: True where an item must not be
    recommended (already clicked in training); ``truth[u]``: held-out clicked item columns of user ``u``."""
    masked = np.where(train_mask, -np.inf, scores)
    top = np.argpartition(-masked, kth=min(k, masked.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(masked, top, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for u, t in enumerate(truth):
        hits = np.isin(top[u], t)
        n = min(k, len(t))
        recalls.append(hits.sum() / n)
        ndcgs.append((hits * discounts).sum() / discounts[:n].sum())
    return float(np.mean(recalls)), float(np.mean(ndcgs))
