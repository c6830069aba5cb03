"""LightGCN checkpoints: one folder holds what the online updater starts from.

Layout: ``config.json`` (dataset, dim, layers, training settings, metrics), ``embeddings.npz`` (base
embeddings, trained flags, node keys) and ``history.npz`` (the interaction rows the graph was built from).
Arrays are saved without pickling and loaded with ``allow_pickle=False``. Loading replays the history into a
fresh :class:`~graph_updater.online.GraphUpdater`, checks the node order matches, restores the base embeddings
and re-propagates, so a reloaded checkpoint yields the same vectors as the one saved. :func:`load_arrays` reads
the same folder as arrays only (no Python graph), what a partitioned updater prunes to its share at every
rebuild (:class:`~graph_updater.shard.ShardUpdater`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from graph_updater.datasets import Interactions
from graph_updater.graph import ITEM, USER, LightGCNGraph, node_key, split_node_key
from graph_updater.online import GraphUpdater

REQUIRED = ("config.json", "embeddings.npz", "history.npz")


def history_event_id(name: str, row: int) -> str:
    """The event id of row ``row`` of the history called ``name`` (unique per row): what the users' recent-events
    windows hold."""
    return f"{name}-h{row}"


def build_updater(history: Interactions, dim: int, num_layers: int, recent_n: int = 20) -> GraphUpdater:
    """A :class:`GraphUpdater` whose graph and user histories hold ``history`` (layers not yet computed)."""
    nodes = len(set(history.users)) + len(set(history.items))  # users and items never share a node key
    updater = GraphUpdater(LightGCNGraph(dim, num_layers, capacity=nodes * 5 // 4), recent_n=recent_n)  # 25% headroom
    event_ids = [history_event_id(history.name, k) for k in range(len(history))]
    updater.ingest(event_ids, history.users, history.items, history.labels.tolist(), history.ts.tolist())
    return updater


def save(folder: Path, updater: GraphUpdater, history: Interactions, config: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = updater.graph
    np.savez(folder / "embeddings.npz", base=g.base(), trained=g.trained[: len(g)],
             keys=np.array(g.keys, dtype=str))
    np.savez(folder / "history.npz", users=history.users.astype(str), items=history.items.astype(str),
             labels=history.labels, ts=history.ts, name=np.array(history.name))
    (folder / "config.json").write_text(json.dumps({**config, "dim": g.dim, "num_layers": g.num_layers},
                                                   indent=2, sort_keys=True))
    return folder


def read(folder: Path) -> tuple[Interactions, dict, np.ndarray, np.ndarray, np.ndarray]:
    """The saved history, config, node keys, base embeddings and trained flags of ``folder``; a missing file
    raises ``FileNotFoundError`` naming it."""
    folder = Path(folder)
    for name in REQUIRED:
        if not (folder / name).exists():
            raise FileNotFoundError(f"LightGCN checkpoint incomplete: {folder / name} is missing")
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "history.npz", allow_pickle=False) as h:
        history = Interactions(str(h["name"]), h["users"].astype(object), h["items"].astype(object),
                               h["labels"], h["ts"])
    with np.load(folder / "embeddings.npz", allow_pickle=False) as e:
        keys, base, trained = e["keys"], e["base"], e["trained"]
    return history, config, keys, base, trained


def load(folder: Path, recent_n: int = 20) -> tuple[GraphUpdater, dict]:
    """Rebuild the updater saved in ``folder``; return it with the saved config."""
    history, config, keys, base, trained = read(folder)
    updater = build_updater(history, config["dim"], config["num_layers"], recent_n=recent_n)
    if keys.tolist() != updater.graph.keys:
        raise ValueError(f"{folder}: node order of embeddings.npz does not match history.npz")
    updater.graph.set_base(base, trained=trained)
    updater.graph.propagate_full()
    return updater, config


@dataclass(frozen=True)
class CheckpointArrays:
    """A checkpoint as arrays: ``keys`` (node keys in the graph's order), ``base`` (``(n, dim)``) and ``trained``
    per node, the history rows (``history_name``, and per row its user and item nodes ``user_nodes`` /
    ``item_nodes``, ``labels`` and ``ts``), and ``edges`` (``(2, E)`` user, item node pairs whose latest history
    reaction is a like: the graph the history builds, where a later reaction to the same pair wins). What
    :func:`load` builds, without the Python graph and without a string per history row."""

    keys: list[str]
    base: np.ndarray
    trained: np.ndarray
    num_layers: int
    history_name: str
    user_nodes: np.ndarray
    item_nodes: np.ndarray
    labels: np.ndarray
    ts: np.ndarray
    edges: np.ndarray
    partitions: dict = field(default_factory=dict, compare=False, repr=False)  # node_partitions' results

    @property
    def dim(self) -> int:
        return self.base.shape[1]

    @classmethod
    def of(cls, history: Interactions, keys: list[str], base: np.ndarray, trained: np.ndarray | bool,
           num_layers: int) -> CheckpointArrays:
        """The arrays of ``history`` over the nodes ``keys`` (every node of the history, in graph order)."""
        index = {k: v for v, k in enumerate(keys)}
        try:
            users = np.fromiter((index[node_key(USER, u)] for u in history.users), np.int64, len(history))
            items = np.fromiter((index[node_key(ITEM, i)] for i in history.items), np.int64, len(history))
        except KeyError as missing:
            raise ValueError(f"history node {missing} has no embedding") from None
        pair = users * len(keys) + items
        last = len(pair) - 1 - np.unique(pair[::-1], return_index=True)[1]  # each pair's latest row
        last = np.sort(last[history.labels[last] == 1])
        trained = np.broadcast_to(np.asarray(trained, dtype=bool), (len(keys),)).copy()
        return cls(list(keys), np.asarray(base, dtype=np.float32), trained, num_layers, history.name, users, items,
                   np.asarray(history.labels), np.asarray(history.ts), np.stack([users[last], items[last]]))

    @cached_property
    def external_ids(self) -> list[str]:
        """Each node's external id (user or item id), in the graph's order: one string per node, which its history
        rows share (computed once)."""
        return [split_node_key(key)[1] for key in self.keys]

    def node_partitions(self, partitions: int, partition_of: Callable[[str, int], int]) -> np.ndarray:
        """Each node's partition among ``partitions`` by ``partition_of(external id, partitions)`` (computed once
        per count: ~1 us a node)."""
        if partitions not in self.partitions:
            self.partitions[partitions] = np.fromiter((partition_of(external_id, partitions)
                                                       for external_id in self.external_ids), np.int64, len(self.keys))
        return self.partitions[partitions]

    @classmethod
    def empty(cls, dim: int, num_layers: int) -> CheckpointArrays:
        """No checkpoint (a cold deployment): no nodes, no history."""
        nothing = np.zeros(0, dtype=object)
        history = Interactions("cold", nothing, nothing, np.zeros(0, np.int8), np.zeros(0, np.int64))
        return cls.of(history, [], np.zeros((0, dim), np.float32), False, num_layers)


def load_arrays(folder: Path) -> CheckpointArrays:
    """:class:`CheckpointArrays` of the checkpoint in ``folder``."""
    history, config, keys, base, trained = read(folder)
    return CheckpointArrays.of(history, keys.tolist(), base, trained, config["num_layers"])
