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

from graph_updater.datasets import Interactions
from graph_updater.graph import ITEM, USER, LightGCNGraph, split_node_key


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


def ranking_report(graph: LightGCNGraph, test: Interactions, k: int = 20, chunk: int = 512,
                   max_users: int | None = None, seed: int = 0) -> dict[str, float]:
    """Recall@k / NDCG@k of LightGCN (dot product of final embeddings) and of item popularity (degree), on the
    same users: those with a click in ``test`` and at least one edge in ``graph``. Items a user already
    clicked in the graph are not recommended; held-out items the graph never saw count as misses."""
    items = np.array([v for v, key in enumerate(graph.keys) if key.startswith(ITEM + ":")], dtype=np.int64)
    column = {split_node_key(graph.keys[v])[1]: c for c, v in enumerate(items)}
    truth_by_user: dict[int, list[int]] = {}
    for user, item in zip(test.users[test.labels == 1], test.items[test.labels == 1], strict=True):
        v = graph.node(USER, user)
        if v is not None and graph.adj[v]:
            truth_by_user.setdefault(v, []).append(column.get(item, -1))
    users = np.array(sorted(truth_by_user), dtype=np.int64)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    final = graph.final()
    item_vectors = final[items]
    popularity = np.fromiter((len(graph.adj[v]) for v in items), dtype=np.float32, count=len(items))
    item_position = np.full(len(graph), -1, dtype=np.int64)
    item_position[items] = np.arange(len(items))
    sums = {"lightgcn": np.zeros(2), "popularity": np.zeros(2)}
    for start in range(0, len(users), chunk):
        block = users[start:start + chunk]
        mask = np.zeros((len(block), len(items)), dtype=bool)
        for r, v in enumerate(block):
            cols = item_position[np.fromiter(graph.adj[v], dtype=np.int64)]
            mask[r, cols[cols >= 0]] = True
        truth = [np.array(truth_by_user[v]) for v in block]
        for name, scores in (("lightgcn", final[block] @ item_vectors.T),
                             ("popularity", np.broadcast_to(popularity, mask.shape))):
            recall, ndcg = recall_ndcg(scores, mask, truth, k)
            sums[name] += np.array([recall, ndcg]) * len(block)
    n = max(len(users), 1)
    report = {f"{metric}{k}_{model}": float(sums[model][m] / n)
              for model in ("lightgcn", "popularity") for m, metric in enumerate(("recall", "ndcg"))}
    return {**report, "eval_users": len(users)}
