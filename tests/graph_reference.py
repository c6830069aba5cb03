"""One-pass references the click path's live, restarted and partitioned states are compared with."""

from __future__ import annotations

from pathlib import Path

from graph_updater import checkpoint
from graph_updater.datasets import Split
from graph_updater.online import GraphUpdater


def ingest_stream(updater: GraphUpdater, split: Split, n: int) -> GraphUpdater:
    """``updater`` after the first ``n`` stream clicks in one offline pass (event ids ``s0``, ``s1``, ...)."""
    stream = split.stream.take(slice(0, n))
    updater.ingest([f"s{k}" for k in range(n)], stream.users, stream.items, stream.labels.tolist(),
                   stream.ts.tolist())
    return updater


def exact_reference(folder: Path, split: Split, n: int) -> GraphUpdater:
    """The checkpoint in ``folder`` (its trained base embeddings) after the first ``n`` stream clicks in one pass,
    every new node folded in and every layer propagated exactly: what a restarted updater's vectors equal and a
    live or partitioned one's approximate."""
    ref = ingest_stream(checkpoint.load(folder)[0], split, n)
    ref.graph.fold_in(range(len(ref.graph)))
    ref.graph.propagate_full()
    return ref
