r"""One partitioned graph updater's share of the graph (pure: no Kafka, no vector store).

N updaters split the work by Kafka's own partitioning. ``clicks`` is keyed by user, so the updater holding
partition ``p`` of ``clicks`` owns the users whose key hashes there: their reaction histories, payloads and
points, and the user side of their edges. Each click it applies is forwarded, keyed by item, to
``clicks-by-item`` (an :class:`~schemas.messages.ItemClick` saying whether the like edge was added or removed);
the updater holding partition ``q`` of that topic owns those items: their reaction counts, points and the item
side of their edges. Ownership is Kafka's default partitioner (:func:`partition_of`: murmur2 of the key bytes,
what every Kafka client's default producer uses), so any updater can tell who owns a node.

LightGCN layers cross owners. With the streaming refresh (radius 0) a node's layers read only its
neighbours' cached layers ``0..K-1`` and degrees:

.. math::
    e_v^{(k)} = \sum_{w \in N(v)} \frac{e_w^{(k-1)}}{\sqrt{d_v d_w}}, \quad k = 1..K

so each owner publishes ``(d_v, trained_v, e_v^{(0..K-1)})`` of the nodes it recomputed (:func:`encode_layers`,
topic ``node-layers``, compacted) and keeps every other owner's latest values (:meth:`ShardUpdater.adopt`). A
neighbour on another owner is read as last published, at most one exchange behind what one process would read
(one process's radius-0 refresh already reads cached, possibly stale, neighbour layers). A neighbour whose
degree has not arrived yet (an item first liked in this very batch) counts with degree 1.

State per updater: its owned nodes' histories, counts and adjacency; the layers of every node (the
``node-layers`` table, ``(K+1) x dim`` float32 each, like a faust global table). A share starts from the
checkpoint's arrays (:class:`~graph_updater.checkpoint.CheckpointArrays`): every node's degree and layers by
array operations over the whole graph, the Python state (histories, counts, adjacency sets) of the owned nodes
only — so a rebuild costs in proportion to the share, not to the whole checkpoint.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np
from aiokafka.partitioner import murmur2

from graph_updater.checkpoint import CheckpointArrays, history_event_id
from graph_updater.graph import ITEM, USER, LightGCNGraph, node_key, propagated, split_node_key
from graph_updater.online import GraphUpdater, VectorRecord
from schemas.codec import InvalidMessage, decode
from schemas.messages import Click, ItemClick

LAYER_HEADER = struct.Struct("<fB")  # degree, trained flag; then layers 0..K-1 as float32


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partition of a record keyed ``key`` among ``partitions`` (murmur2, as the Java client)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def parse_item_click(key: bytes | None, value: bytes | None) -> ItemClick:
    """Decode a ``clicks-by-item`` record; its key must be the item id (the partitioning contract)."""
    click = decode(ItemClick, value)
    if key != click.item_id.encode():
        raise InvalidMessage("KeyMismatch", f"message key {None if key is None else key[:64]!r} is not item_id "
                                            f"{click.item_id!r}")
    return click


def encode_layers(degree: float, trained: bool, layers: np.ndarray) -> bytes:
    """A ``node-layers`` value: the node's degree, whether its base embedding is learned, and its layers
    ``0..K-1`` (``(K, dim)`` float32, little-endian) — what a neighbour's radius-0 refresh and fold-in read."""
    return LAYER_HEADER.pack(degree, trained) + np.ascontiguousarray(layers, dtype="<f4").tobytes()


def decode_layers(value: bytes, num_layers: int, dim: int) -> tuple[float, bool, np.ndarray]:
    """Inverse of :func:`encode_layers`; a value of the wrong size raises ``ValueError``."""
    expected = LAYER_HEADER.size + num_layers * dim * 4
    if len(value) != expected:
        raise ValueError(f"node-layers value of {len(value)} bytes, expected {expected} "
                         f"({num_layers} layers of {dim} float32)")
    degree, trained = LAYER_HEADER.unpack_from(value)
    layers = np.frombuffer(value, dtype="<f4", offset=LAYER_HEADER.size).reshape(num_layers, dim)
    return degree, bool(trained), layers


class ShardUpdater(GraphUpdater):
    """The state of the updater that owns ``user_partitions`` of ``clicks`` and ``item_partitions`` of
    ``clicks-by-item`` (both with ``partitions`` partitions), started from the whole ``checkpoint``: every node's
    degree and layers as the checkpoint's full propagation gives them (other owners' nodes keep those until
    their owner publishes newer ones), the owned nodes' adjacency, histories and counts as
    :func:`~graph_updater.checkpoint.load` would build them."""

    def __init__(self, checkpoint: CheckpointArrays, user_partitions: Iterable[int],
                 item_partitions: Iterable[int], partitions: int, recent_n: int = 20) -> None:
        graph = LightGCNGraph.of_nodes(checkpoint.keys, checkpoint.dim, checkpoint.num_layers)
        super().__init__(graph, recent_n=recent_n, radius=0)
        self.partitions = partitions
        self.user_partitions, self.item_partitions = frozenset(user_partitions), frozenset(item_partitions)
        n, edges = len(graph), checkpoint.edges
        if n:
            graph.set_base(checkpoint.base, checkpoint.trained)
            graph.deg[:n] = np.bincount(edges.ravel(), minlength=n)
            graph.layers[:, :n] = propagated(edges, checkpoint.base, graph.num_layers)
        owned = self.owned_mask(checkpoint)
        for u, i in edges[:, owned[edges[0]]].T.tolist():
            graph.adj[u].add(i)
        for u, i in edges[:, owned[edges[1]]].T.tolist():
            graph.adj[i].add(u)
        ids = checkpoint.external_ids
        users, items, labels = checkpoint.user_nodes, checkpoint.item_nodes, checkpoint.labels
        rows = np.flatnonzero(owned[users])  # the owned users' reactions, in order
        for k, u, i, label, ts in zip(rows.tolist(), users[rows].tolist(), items[rows].tolist(),
                                      labels[rows].tolist(), checkpoint.ts[rows].tolist(), strict=True):
            self.history(ids[u]).record(history_event_id(checkpoint.history_name, k), ids[i], label, ts)
        rows = np.flatnonzero(owned[items])  # the owned items' reactions
        for i, label in zip(items[rows].tolist(), labels[rows].tolist(), strict=True):
            self.item_reactions.setdefault(ids[i], [0, 0])[0 if label == 1 else 1] += 1

    def owned_mask(self, checkpoint: CheckpointArrays) -> np.ndarray:
        """Whether this updater owns each node of ``checkpoint``."""
        users = np.fromiter((key.startswith(USER + ":") for key in checkpoint.keys), bool, len(checkpoint.keys))
        parts = checkpoint.node_partitions(self.partitions, partition_of)
        return np.where(users, np.isin(parts, list(self.user_partitions)), np.isin(parts, list(self.item_partitions)))

    def owns(self, kind: str, external_id: str) -> bool:
        mine = self.user_partitions if kind == USER else self.item_partitions
        return partition_of(external_id, self.partitions) in mine

    def owned_nodes(self) -> list[int]:
        """Every node this updater writes: its users with a history and its items with reaction counts."""
        index = self.graph.index
        return ([index[node_key(USER, u)] for u in self.histories]
                + [index[node_key(ITEM, i)] for i in self.item_reactions])

    def apply_users(self, clicks: Sequence[Click]) -> tuple[list[ItemClick], set[int], set[int]]:
        """The user side of clicks of owned users: histories and user edges. Returns the clicks to forward to
        the items' owners (event ids already applied are dropped here, so they are never forwarded), the users
        that reacted and those whose edges changed."""
        forwards, reacting, touched = [], set(), set()
        for c in clicks:
            if not self.history(c.user_id).record(c.event_id, c.item_id, c.label, c.ts):
                continue
            u, i = self.graph.ensure_node(USER, c.user_id), self.graph.ensure_node(ITEM, c.item_id)
            linked = c.label == 1
            edge = (1 if linked else -1) if self.graph.link_side(u, i, linked) else 0
            if edge:
                touched.add(u)
            reacting.add(u)
            forwards.append(ItemClick(event_id=c.event_id, user_id=c.user_id, item_id=c.item_id, label=c.label,
                                      ts=c.ts, edge=edge))
        return forwards, reacting, touched

    def apply_items(self, clicks: Sequence[ItemClick]) -> tuple[set[int], set[int]]:
        """The item side of forwarded clicks of owned items: counts and item edges (as the user's owner decided).
        Each forward arrives exactly once (produced in the same transaction that committed its click). Returns
        the items that were reacted to and those whose edges changed."""
        reacting, touched = set(), set()
        for c in clicks:
            counts = self.item_reactions.setdefault(c.item_id, [0, 0])
            counts[0 if c.label == 1 else 1] += 1
            i, u = self.graph.ensure_node(ITEM, c.item_id), self.graph.ensure_node(USER, c.user_id)
            if c.edge and self.graph.link_side(i, u, c.edge > 0):
                touched.add(i)
            reacting.add(i)
        return reacting, touched

    def step(self, clicks: Sequence[Click], item_clicks: Sequence[ItemClick]
             ) -> tuple[list[ItemClick], list[VectorRecord], dict[str, bytes]]:
        """One micro-batch: apply both sides, refresh the changed nodes (radius 0). Returns the forwards, the
        records of the owned nodes that reacted, and the ``node-layers`` values of the nodes recomputed."""
        forwards, users, changed_users = self.apply_users(clicks)
        items, changed_items = self.apply_items(item_clicks)
        recomputed = self.graph.refresh(changed_users | changed_items, radius=0)
        return forwards, self.records(users | items), self.layer_values(recomputed)

    def layer_values(self, nodes: Iterable[int]) -> dict[str, bytes]:
        """``node key -> node-layers value`` of ``nodes`` (:func:`encode_layers`)."""
        g, k = self.graph, self.graph.num_layers
        return {g.keys[v]: encode_layers(float(g.deg[v]), bool(g.trained[v]), g.layers[:k, v]) for v in nodes}

    def adopt(self, values: Iterable[tuple[str, bytes]]) -> int:
        """Take other owners' published layers (the latest per node wins; values of nodes this updater owns are
        its own, and skipped). Returns how many nodes were updated."""
        g, adopted = self.graph, 0
        for key, value in values:
            kind, external_id = split_node_key(key)
            if self.owns(kind, external_id):
                continue
            degree, trained, layers = decode_layers(value, g.num_layers, g.dim)
            v = g.ensure_node(kind, external_id)
            g.deg[v], g.trained[v] = degree, trained
            g.layers[: g.num_layers, v] = layers
            adopted += 1
        return adopted
