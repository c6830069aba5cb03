r"""LightGCN on a growing user–item bipartite graph, with incremental fold-in (pure math, no I/O).

Nodes are users and items in one index space; an undirected edge joins a user and an item the user clicked
(label 1). With :math:`d_v` the degree of node :math:`v`, LightGCN propagates base embeddings
:math:`e^{(0)}` without weights or nonlinearity (He et al., 2020):

.. math::
    e_v^{(k+1)} = \sum_{u \in N(v)} \frac{e_u^{(k)}}{\sqrt{d_v d_u}}, \qquad
    e_v = \frac{1}{K+1} \sum_{k=0}^{K} e_v^{(k)}

which is ``torch_geometric.nn.LightGCN`` with its default ``alpha = 1/(K+1)``. Propagation is linear, so when
edges change only the layers of nodes near the change move: layer :math:`k` of node :math:`v` changes only if
:math:`v` lies within :math:`k` hops of an endpoint of a changed edge. :meth:`LightGCNGraph.refresh` recomputes
layers ``1..K`` for the nodes within ``radius`` hops of the touched nodes, in layer order, reading cached layers
of every other node. ``radius = K`` reproduces full propagation exactly; ``radius = 0`` (the streaming
default) updates only the touched nodes themselves from their neighbours' cached layers, which is exact at
layer 1 and approximate above (neighbours' own layers lag until they are touched or a full refresh runs).

A node that joins with no trained base embedding is folded in from its neighbours:
:math:`e_v^{(0)} = \frac{1}{|T(v)|} \sum_{u \in T(v)} e_u^{(0)}` over its trained neighbours :math:`T(v)`
(random when it has none, i.e. on a graph that no training has seen yet).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse

USER, ITEM = "u", "i"


def node_key(kind: str, external_id: str) -> str:
    return f"{kind}:{external_id}"


def split_node_key(key: str) -> tuple[str, str]:
    """``(kind, external id)`` of a :func:`node_key`."""
    kind, external_id = key.split(":", 1)
    return kind, external_id


@dataclass(frozen=True)
class EdgeChange:
    """Add (``present=True``) or remove the click edge between ``user_id`` and ``item_id``."""

    user_id: str
    item_id: str
    present: bool


def propagated(edges: np.ndarray, base: np.ndarray, num_layers: int) -> np.ndarray:
    r"""Layers ``0..K`` (``(K+1, n, dim)`` float32) of the ``n = len(base)`` nodes joined by the undirected
    ``(2, E)`` ``edges``: :math:`e^{(k+1)} = \hat A e^{(k)}` with :math:`\hat A = D^{-1/2} A D^{-1/2}` (isolated
    nodes: zero rows). Pure: reads only its arguments (a refinement runs it in a thread on a copy)."""
    n = len(base)
    row, col = np.concatenate([edges[0], edges[1]]), np.concatenate([edges[1], edges[0]])
    deg = np.bincount(row, minlength=n).astype(np.float32)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0).astype(np.float32)
    adjacency = scipy.sparse.csr_matrix((inv_sqrt[row] * inv_sqrt[col], (row, col)), shape=(n, n))
    adjacency.sort_indices()  # each row summed in node order: the same bits whatever order the edges came in
    layers = np.empty((num_layers + 1, n, base.shape[1]), dtype=np.float32)
    layers[0] = base
    for k in range(1, num_layers + 1):
        layers[k] = adjacency @ layers[k - 1]
    return layers


class LightGCNGraph:
    """Node registry, adjacency sets, and cached per-layer embeddings ``layers[k, node]`` (float32)."""

    def __init__(self, dim: int, num_layers: int, capacity: int = 1024) -> None:
        self.dim, self.num_layers = dim, num_layers
        self.index: dict[str, int] = {}
        self.keys: list[str] = []
        self.adj: list[set[int]] = []
        self.layers = np.zeros((num_layers + 1, max(capacity, 16), dim), dtype=np.float32)
        self.trained = np.zeros(max(capacity, 16), dtype=bool)  # base embedding learned (vs folded in)
        self.deg = np.zeros(max(capacity, 16), dtype=np.float32)  # len(adj[v]), kept in step with adj

    @classmethod
    def of_nodes(cls, keys: Iterable[str], dim: int, num_layers: int) -> LightGCNGraph:
        """A graph holding the nodes ``keys`` in that order (room for 25% more), no edges, zero layers."""
        keys = list(keys)
        graph = cls(dim, num_layers, capacity=len(keys) * 5 // 4)
        graph.keys, graph.index = keys, {k: v for v, k in enumerate(keys)}
        graph.adj = [set() for _ in keys]
        return graph

    # ---- registry -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def node(self, kind: str, external_id: str) -> int | None:
        return self.index.get(node_key(kind, external_id))

    def reserve(self, capacity: int) -> None:
        """Resize the per-node arrays (``layers``, ``trained``, ``deg``) to ``capacity`` slots, never below the
        nodes present (grown x2 when full)."""
        n, capacity = len(self.keys), max(capacity, len(self.keys), 16)
        layers = np.zeros((self.num_layers + 1, capacity, self.dim), dtype=np.float32)
        layers[:, :n] = self.layers[:, :n]
        trained, deg = np.zeros(capacity, dtype=bool), np.zeros(capacity, dtype=np.float32)
        trained[:n], deg[:n] = self.trained[:n], self.deg[:n]
        self.layers, self.trained, self.deg = layers, trained, deg

    def _add_node(self, key: str) -> int:
        idx = len(self.keys)
        if idx == self.layers.shape[1]:
            self.reserve(2 * idx)
        self.index[key] = idx
        self.keys.append(key)
        self.adj.append(set())
        return idx

    def ensure_node(self, kind: str, external_id: str) -> int:
        key = node_key(kind, external_id)
        idx = self.index.get(key)
        return self._add_node(key) if idx is None else idx

    def degree(self, idx: int) -> int:
        return len(self.adj[idx])

    @property
    def num_edges(self) -> int:
        return sum(len(a) for a in self.adj) // 2

    def edges(self) -> np.ndarray:
        """Undirected edges as a ``(2, E)`` int64 array, each pair once (smaller index first)."""
        n = len(self)
        counts = self.deg[:n].astype(np.int64)
        nbrs = np.fromiter(itertools.chain.from_iterable(self.adj), dtype=np.int64, count=int(counts.sum()))
        src = np.repeat(np.arange(n, dtype=np.int64), counts)
        keep = src < nbrs
        return np.stack([src[keep], nbrs[keep]])

    # ---- embeddings -----------------------------------------------------------------------------------------
    def base(self) -> np.ndarray:
        return self.layers[0, : len(self)]

    def set_base(self, embeddings: np.ndarray, trained: np.ndarray | bool = True) -> None:
        """Replace the base embeddings of all nodes and say which of them are learned (vs folded in)."""
        n = len(self)
        if embeddings.shape != (n, self.dim):
            raise ValueError(f"expected base embeddings of shape {(n, self.dim)}, got {embeddings.shape}")
        self.layers[0, :n] = embeddings
        self.trained[:n] = trained

    def final(self, nodes: np.ndarray | None = None) -> np.ndarray:
        """Layer-averaged embeddings :math:`e_v` of ``nodes`` (all nodes when None)."""
        sel = self.layers[:, : len(self)] if nodes is None else self.layers[:, nodes]
        return sel.mean(axis=0)

    def propagate_full(self) -> None:
        """Recompute every cached layer from the base embeddings (:func:`propagated`)."""
        n = len(self)
        if n:
            self.layers[:, :n] = propagated(self.edges(), self.layers[0, :n], self.num_layers)

    # ---- incremental updates ----------------------------------------------------------------------------------
    def apply(self, changes: Iterable[EdgeChange]) -> set[int]:
        """Add/remove edges (registering new nodes); return the nodes whose edge sets changed."""
        touched: set[int] = set()
        for ch in changes:
            u, i = self.ensure_node(USER, ch.user_id), self.ensure_node(ITEM, ch.item_id)
            if self.link(u, i, ch.present):
                touched.update((u, i))
        return touched

    def link(self, u: int, i: int, present: bool) -> bool:
        """Make the edge between nodes ``u`` and ``i`` present or absent; True if that changed it."""
        if not self.link_side(u, i, present):
            return False
        self.link_side(i, u, present)
        return True

    def link_side(self, v: int, w: int, present: bool) -> bool:
        """Make ``w`` a neighbour of ``v`` or not, on ``v``'s side only (adjacency set and degree); True if that
        changed it. :meth:`link` sets both sides; a partitioned updater owns one side of an edge
        (:mod:`graph_updater.shard`)."""
        nbrs = self.adj[v]
        if present == (w in nbrs):
            return False
        if present:
            nbrs.add(w)
            self.deg[v] += 1
        else:
            nbrs.discard(w)
            self.deg[v] -= 1
        return True

    def hops(self, nodes: Iterable[int], radius: int) -> np.ndarray:
        """All nodes within ``radius`` hops of ``nodes`` (sorted)."""
        frontier = set(nodes)
        seen = set(frontier)
        for _ in range(radius):
            frontier = {u for v in frontier for u in self.adj[v]} - seen
            seen |= frontier
        return np.fromiter(sorted(seen), dtype=np.int64, count=len(seen))

    def neighbours(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The neighbours of ``nodes`` concatenated node by node, and their counts (``deg[nodes]``)."""
        counts = self.deg[nodes].astype(np.int64)
        nbrs = np.fromiter(itertools.chain.from_iterable(map(self.adj.__getitem__, nodes.tolist())),
                           dtype=np.int64, count=int(counts.sum()))
        return nbrs, counts

    def fold_in(self, nodes: Iterable[int]) -> None:
        """Give untrained nodes a base embedding: the mean of their trained neighbours' base embeddings, or,
        with no trained neighbour (a cold graph), a small random vector seeded by the node key.

        The means of all of them are one sparse product (a row per node, a 1 per trained neighbour, in
        neighbour order) divided by the counts: the same float32 sums in the same order as a mean per node."""
        nodes = np.fromiter(nodes, dtype=np.int64)
        new = nodes[~self.trained[nodes] & (self.deg[nodes] > 0)]
        if not len(new):
            return
        nbrs, counts = self.neighbours(new)
        trained = self.trained[nbrs]
        kept = np.add.reduceat(trained, np.concatenate([[0], np.cumsum(counts)[:-1]]), dtype=np.int64)
        nbrs = nbrs[trained]
        rows = scipy.sparse.csr_matrix((np.ones(len(nbrs), dtype=np.float32), nbrs,
                                        np.concatenate([[0], np.cumsum(kept)])), shape=(len(new), len(self)))
        linked = kept > 0
        sums = rows @ self.layers[0, : len(self)]
        self.layers[0, new[linked]] = sums[linked] / kept[linked, None].astype(np.float32)
        for v in new[~linked].tolist():
            rng = np.random.default_rng(zlib.crc32(self.keys[v].encode()))
            self.layers[0, v] = rng.normal(0.0, 0.1, self.dim)

    def refresh(self, touched: Iterable[int], radius: int = 0) -> np.ndarray:
        """Fold in new nodes, recompute layers ``1..K`` near ``touched``; return the nodes recomputed.

        Layer ``k`` of each node in the recompute set is the normalised sum of its neighbours' layer ``k-1``
        (fresh values for neighbours in the set, cached values otherwise).
        """
        touched = list(touched)
        if not touched:
            return np.zeros(0, dtype=np.int64)
        self.fold_in(touched)
        nodes = self.hops(touched, radius)
        nbrs, counts = self.neighbours(nodes)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        # a neighbour's degree is at least 1; a partitioned updater may not have its owner's count yet (shard.py)
        weight = (1.0 / np.sqrt(np.repeat(self.deg[nodes], counts) * np.maximum(self.deg[nbrs], 1))
                  ).astype(np.float32)
        # the rows of the normalised adjacency for `nodes`: one sparse product per layer reads each neighbour's
        # cached row once (no (edges x dim) message array)
        rows = scipy.sparse.csr_matrix((weight, nbrs, indptr), shape=(len(nodes), len(self)))
        for k in range(1, self.num_layers + 1):
            self.layers[k, nodes] = rows @ self.layers[k - 1, : len(self)]
        return nodes
