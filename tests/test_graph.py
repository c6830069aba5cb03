import numpy as np
import pytest

from graph_updater.evaluate import recall_ndcg
from graph_updater.graph import ITEM, USER, EdgeChange, LightGCNGraph


def random_graph(n_users=30, n_items=20, p=0.2, dim=8, layers=3, seed=0) -> LightGCNGraph:
    rng = np.random.default_rng(seed)
    g = LightGCNGraph(dim, layers)
    g.apply(EdgeChange(f"u{u}", f"i{i}", True) for u in range(n_users) for i in range(n_items) if rng.random() < p)
    g.set_base(rng.normal(size=(len(g), dim)).astype(np.float32))
    g.propagate_full()
    return g


def dense_lightgcn(g: LightGCNGraph) -> np.ndarray:
    """Reference: final = mean_k (D^-1/2 A D^-1/2)^k E0 with a dense matrix."""
    n = len(g)
    a = np.zeros((n, n))
    for v, nbrs in enumerate(g.adj):
        a[v, list(nbrs)] = 1
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0)
    norm = inv[:, None] * a * inv[None, :]
    x = g.base().astype(np.float64)
    out = [x]
    for _ in range(g.num_layers):
        x = norm @ x
        out.append(x)
    return np.mean(out, axis=0)


def test_full_propagation_matches_dense_reference():
    g = random_graph()
    np.testing.assert_allclose(g.final(), dense_lightgcn(g), rtol=1e-5, atol=1e-5)


def test_full_propagation_matches_torch_geometric_lightgcn():
    import torch
    from torch_geometric.nn import LightGCN

    g = random_graph()
    e = torch.from_numpy(g.edges())
    model = LightGCN(len(g), g.dim, g.num_layers)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(g.base().copy()))
        ref = model.get_embedding(torch.cat([e, e.flip(0)], 1)).numpy()
    np.testing.assert_allclose(g.final(), ref, rtol=1e-4, atol=1e-5)


def add_new_user(g: LightGCNGraph, items: list[str]) -> set[int]:
    return g.apply(EdgeChange("new-user", it, True) for it in items)


def test_fold_in_with_full_radius_equals_full_propagation():
    g = random_graph()
    touched = add_new_user(g, ["i1", "i4", "i7"])
    g.refresh(touched, radius=g.num_layers)
    incremental = g.final().copy()
    g.propagate_full()  # same base embeddings (the new node's was folded in), everything recomputed
    np.testing.assert_allclose(incremental, g.final(), rtol=1e-5, atol=1e-6)


def test_fold_in_radius_zero_is_close_to_full_propagation_for_the_new_node():
    g = random_graph(n_users=200, n_items=60, p=0.15)
    touched = add_new_user(g, ["i1", "i4", "i7", "i9"])
    new = g.node(USER, "new-user")
    g.refresh(touched, radius=0)
    approx = g.final(np.array([new]))[0]
    g.propagate_full()
    exact = g.final(np.array([new]))[0]
    cos = approx @ exact / np.linalg.norm(approx) / np.linalg.norm(exact)
    assert cos > 0.99
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 0.1


def test_new_node_base_embedding_is_the_mean_of_its_neighbours():
    g = random_graph()
    items = ["i2", "i3"]
    before = np.stack([g.base()[g.node(ITEM, i)] for i in items]).mean(0)
    g.refresh(add_new_user(g, items))
    np.testing.assert_allclose(g.base()[g.node(USER, "new-user")], before, rtol=1e-6)


def test_folding_in_many_nodes_at_once_gives_each_the_mean_of_its_trained_neighbours_only():
    """One batch holds new users of every kind: many trained neighbours, some untrained ones (skipped), and only
    untrained ones (a stable random vector from the key, as on a cold graph)."""
    g = random_graph(n_users=60, n_items=40, p=0.3)
    g.trained[: len(g)] = True
    changes = [EdgeChange(f"new{k}", f"i{j}", True) for k in range(25) for j in range(k % 7, 40, 3)]
    changes += [EdgeChange(f"new{k}", "fresh-item", True) for k in range(0, 25, 2)]  # a new, untrained item
    changes += [EdgeChange("lonely", "fresh-item", True)]
    touched = g.apply(changes)
    before = g.base().copy()
    g.fold_in(touched)
    for k in range(25):
        v = g.node(USER, f"new{k}")
        trained = [w for w in g.adj[v] if g.trained[w]]  # the same order as the fold-in reads them
        assert len(trained) == g.degree(v) - (k % 2 == 0)
        np.testing.assert_array_equal(g.base()[v], before[trained].mean(axis=0))
    lonely = g.base()[g.node(USER, "lonely")]
    assert np.linalg.norm(lonely) > 0
    again = random_graph(n_users=60, n_items=40, p=0.3)
    again.apply([EdgeChange("lonely", "fresh-item", True)])
    again.fold_in([again.node(USER, "lonely")])
    np.testing.assert_array_equal(again.base()[again.node(USER, "lonely")], lonely)


def test_edge_removal_and_idempotent_add():
    g = random_graph()
    u, i = g.node(USER, "u0"), next(iter(g.adj[g.node(USER, "u0")]))
    item_id = g.keys[i].split(":", 1)[1]
    assert g.apply([EdgeChange("u0", item_id, True)]) == set()  # already present: nothing changes
    assert g.apply([EdgeChange("u0", item_id, False)]) == {u, i}
    assert i not in g.adj[u] and u not in g.adj[i]
    g.refresh({u, i}, radius=g.num_layers)
    np.testing.assert_allclose(g.final(), dense_lightgcn(g), rtol=1e-4, atol=1e-5)


def test_graph_grows_past_its_capacity():
    g = LightGCNGraph(4, 2, capacity=16)
    g.apply(EdgeChange(f"u{k}", f"i{k % 7}", True) for k in range(100))
    assert len(g) == 107 and g.layers.shape[1] >= 107 and g.num_edges == 100


def test_recall_and_ndcg():
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    mask = np.array([[True, False, False, False], [False, False, False, False]])
    recall, ndcg = recall_ndcg(scores, mask, [np.array([1]), np.array([0, 3])], k=2)
    # user 0: top2 after masking = [1, 3] -> hit at rank 1; user 1: top2 = [3, 2] -> 1 of 2 at rank 1
    assert recall == pytest.approx((1 + 0.5) / 2)
    idcg2 = 1 + 1 / np.log2(3)
    assert ndcg == pytest.approx((1 + 1 / idcg2) / 2)
