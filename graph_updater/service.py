"""Assemble a graph-updater process: checkpoint -> replay of committed clicks -> store sync -> click loop.

Used by ``exitrec graph-updater`` (under a faust ``Worker``), by the demo, and in-process by the tests and the
benchmark, so all of them run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
import structlog

from graph_updater import checkpoint
from graph_updater.agent import UpdaterStats, register_updater, updater_group
from graph_updater.graph import LightGCNGraph
from graph_updater.online import GraphUpdater
from graph_updater.recovery import replay_committed
from graph_updater.store import VectorStore, open_store
from infra.runtime.app import Topics, create_app, create_topics, declare_topics
from infra.runtime.heap import freeze_long_lived
from infra.runtime.settings import Settings

log = structlog.get_logger("graph_updater")
DEFAULT_DIM, DEFAULT_LAYERS = 64, 3


@dataclass
class UpdaterService:
    app: faust.App
    topics: Topics
    updater: GraphUpdater
    store: VectorStore
    stats: UpdaterStats
    replayed: int  # committed clicks re-applied from the log at start


def store_for(settings: Settings) -> VectorStore:
    return open_store(settings.vector_backend, settings.qdrant_url, settings.qdrant_path,
                      settings.collection_prefix)


def initial_arrays(settings: Settings) -> checkpoint.CheckpointArrays:
    """:func:`initial_updater`'s start as arrays (:func:`~graph_updater.checkpoint.load_arrays`), what partitioned
    updaters prune to their share."""
    if settings.graph_checkpoint is None:
        return checkpoint.CheckpointArrays.empty(DEFAULT_DIM, DEFAULT_LAYERS)
    return checkpoint.load_arrays(settings.graph_checkpoint)


def initial_updater(settings: Settings) -> GraphUpdater:
    """The updater from ``settings.graph_checkpoint``, or an empty graph (cold deployment) when none is set."""
    if settings.graph_checkpoint is None:
        return GraphUpdater(LightGCNGraph(DEFAULT_DIM, DEFAULT_LAYERS), recent_n=settings.payload_recent_items)
    updater, _ = checkpoint.load(settings.graph_checkpoint, recent_n=settings.payload_recent_items)
    return updater


async def rebuild(settings: Settings, store: VectorStore | None = None,
                  updater: GraphUpdater | None = None) -> tuple[GraphUpdater, VectorStore, int]:
    """Create missing topics, rebuild state (checkpoint + committed clicks), write every vector once.
    Returns the updater, the store and how many committed clicks were replayed."""
    await create_topics(settings)
    updater = updater or initial_updater(settings)
    replayed = await replay_committed(settings.kafka_bootstrap, updater_group(settings),
                                      settings.topic("clicks"), updater)
    if replayed:  # the restart guarantee (module docstring of graph_updater.recovery): exact propagation
        updater.graph.propagate_full()
    store = store or store_for(settings)
    store.ensure_collections(updater.graph.dim)
    written = store.upsert(updater.all_records())
    store.optimize()
    freeze_long_lived()  # the rebuilt graph: millions of long-lived objects
    log.info("graph_updater_ready", nodes=len(updater.graph), edges=updater.graph.num_edges,
             replayed_clicks=replayed, vectors_written=written)
    return updater, store, replayed


def build(settings: Settings, updater: GraphUpdater, store: VectorStore, replayed: int) -> UpdaterService:
    """The faust app hosting the click loop (built outside a running loop when a faust Worker runs it)."""
    app = create_app(settings)
    topics = declare_topics(app, settings)
    stats = UpdaterStats()
    register_updater(app, topics, updater, store, settings, stats)
    return UpdaterService(app, topics, updater, store, stats, replayed)


async def prepare(settings: Settings, store: VectorStore | None = None,
                  updater: GraphUpdater | None = None) -> UpdaterService:
    """:func:`rebuild` then :func:`build`, for callers that run the app in their own loop (tests, demo)."""
    return build(settings, *await rebuild(settings, store, updater))
