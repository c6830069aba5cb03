"""LightGCN checkpoints: one folder holds what the online updater starts from.

Layout: ``config.json`` (dataset, dim, layers, training settings, metrics), ``embeddings.npz`` (base
embeddings, trained flags, node keys) and ``history.npz`` (the interaction rows the graph was built from).
Arrays are saved without pickling and loaded with ``allow_pickle=False``. Loading replays the history into a
fresh :class:`~graph_updater.online.GraphUpdater`, checks the node order matches, restores the base embeddings
and re-propagates, so a reloaded checkpoint yields the same vectors as the one saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graph_updater.datasets import Interactions
from graph_updater.graph import LightGCNGraph
from graph_updater.online import GraphUpdater


def build_updater(history: Interactions, dim: int, num_layers: int, recent_n: int = 20) -> GraphUpdater:
    """A :class:`GraphUpdater` whose graph and user histories hold ``history`` (layers not yet computed)."""
    nodes = len(set(history.users)) + len(set(history.items))  # users and items never share a node key
    updater = GraphUpdater(LightGCNGraph(dim, num_layers, capacity=nodes * 5 // 4), recent_n=recent_n)  # 25% headroom
    event_ids = [f"{history.name}-h{k}" for k in range(len(history))]
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


def load(folder: Path, recent_n: int = 20) -> tuple[GraphUpdater, dict]:
    """Rebuild the updater saved in ``folder``; return it with the saved config."""
    folder = Path(folder)
    for name in ("config.json", "embeddings.npz", "history.npz"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"LightGCN checkpoint incomplete: {folder / name} is missing")
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "history.npz", allow_pickle=False) as h:
        history = Interactions(str(h["name"]), h["users"].astype(object), h["items"].astype(object),
                               h["labels"], h["ts"])
    updater = build_updater(history, config["dim"], config["num_layers"], recent_n=recent_n)
    with np.load(folder / "embeddings.npz", allow_pickle=False) as e:
        if e["keys"].tolist() != updater.graph.keys:
            raise ValueError(f"{folder}: node order of embeddings.npz does not match history.npz")
        updater.graph.set_base(e["base"], trained=e["trained"])
    updater.graph.propagate_full()
    return updater, config
