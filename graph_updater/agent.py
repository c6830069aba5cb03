"""The faust agent on ``clicks``: micro-batch -> graph update -> vector upsert, bad messages -> ``clicks.dlq``.

Per micro-batch (up to ``updater_batch_size`` clicks or ``updater_batch_wait_ms``):
1. decode each message; an invalid one (or one whose key is not its user id) becomes a dead letter;
2. dead letters are produced and their delivery awaited;
3. the valid clicks update the graph (:class:`~graph_updater.online.GraphUpdater`) and the changed vectors are
   upserted, retrying until the store accepts them;
4. every ``refine_every_clicks`` clicks, a few BPR steps refine the embeddings and the moved vectors are upserted.
Only then does ``take_events`` ack the batch, so a committed offset never runs ahead of the outputs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import faust
import structlog

from graph_updater.online import GraphUpdater, VectorRecord, parse_click
from graph_updater.store import VectorStore
from schemas.codec import InvalidMessage, dead_letter, encode
from schemas.messages import Click
from worker.app import Topics
from worker.settings import Settings

log = structlog.get_logger("graph_updater")


@dataclass
class UpdaterStats:
    """Counters an operator (and the tests and benchmarks) read from a running updater."""

    clicks: int = 0
    dead_letters: int = 0
    batches: int = 0
    upserts: int = 0
    refinements: int = 0
    store_retries: int = 0
    freshness_ms: deque = field(default_factory=lambda: deque(maxlen=200_000), repr=False)


def parse_batch(events: Sequence[faust.EventT]) -> tuple[list[Click], list[tuple[faust.EventT, Exception]]]:
    """Split raw events into valid clicks and (event, error) pairs for the dead-letter topic."""
    clicks, bad = [], []
    for event in events:
        try:
            clicks.append(parse_click(event.message.key, event.message.value))
        except InvalidMessage as err:
            bad.append((event, err))
    return clicks, bad


async def upsert_with_retry(store: VectorStore, records: list[VectorRecord], stats: UpdaterStats,
                            max_backoff_s: float = 5.0) -> None:
    """Upsert until the store accepts: the batch is not acked before, so nothing is lost while it is down."""
    backoff = 0.1
    while True:
        try:
            stats.upserts += store.upsert(records)
            return
        except Exception as exc:  # any store/transport failure: keep the batch, retry
            stats.store_retries += 1
            log.warning("vector_store_upsert_failed", error=repr(exc)[:500], retry_in_s=backoff,
                        records=len(records))
            await asyncio.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)


def register_updater(app: faust.App, topics: Topics, updater: GraphUpdater, store: VectorStore,
                     settings: Settings, stats: UpdaterStats) -> faust.types.AgentT:
    """Declare the click agent on ``app``; returns it."""

    async def process(events: Sequence[faust.EventT]) -> None:
        started = time.perf_counter()
        clicks, bad = parse_batch(events)
        for event, err in bad:
            msg = event.message
            letter = dead_letter(msg.topic, msg.partition, msg.offset, msg.key, msg.value, err)
            await (await topics.clicks_dlq.send(key=msg.key, value=encode(letter)))
            log.warning("click_dead_lettered", partition=msg.partition, offset=msg.offset,
                        error_class=letter.error_class, reason=letter.error_message[:300])
        records = updater.apply(clicks)
        if records:
            await upsert_with_retry(store, records, stats)
        done_ms = time.time() * 1000
        stats.freshness_ms.extend(done_ms - e.message.timestamp * 1000 for e in events)
        if settings.refine_every_clicks and updater.clicks_since_refine >= settings.refine_every_clicks:
            moved = updater.refine(settings.refine_steps)
            await upsert_with_retry(store, moved, stats)
            stats.refinements += 1
            log.info("graph_refined", steps=settings.refine_steps, vectors_moved=len(moved))
        stats.clicks += len(clicks)
        stats.dead_letters += len(bad)
        stats.batches += 1
        log.debug("click_batch", clicks=len(clicks), dead_letters=len(bad), vectors=len(records),
                  event_ids=[c.event_id for c in clicks[:5]], ms=round((time.perf_counter() - started) * 1e3, 2))

    @app.agent(topics.clicks, name=f"{settings.consumer_group}.update_graph")
    async def update_graph(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.updater_batch_size,
                                               within=settings.updater_batch_wait_ms / 1000):
            await process(events)

    return update_graph
