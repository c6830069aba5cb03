"""The click loop: micro-batch -> graph update -> vector upsert, bad messages -> ``clicks.dlq``.

Per micro-batch (up to ``updater_batch_size`` clicks, or what arrived within ``updater_batch_wait_ms``; under a
backlog the cap doubles while polls come back full, up to ``updater_batch_max``):
1. decode each record; an invalid one (or one whose key is not its user id) becomes a dead letter;
2. dead letters are produced and their delivery awaited;
3. the valid clicks update the graph (:class:`~graph_updater.online.GraphUpdater`) and the changed vectors are
   upserted, retrying until the store accepts them;
4. every ``refine_every_clicks`` clicks, a few BPR steps refine the embeddings on a copy of the graph in a
   worker thread (propagated there too) while the loop goes on; a later batch merges the result and upserts
   the moved vectors (:meth:`ClickLoop.refine`);
5. only then are the batch's offsets committed, so a committed offset never runs ahead of the outputs.

The loop runs as a task of the faust app (which hosts the process: lifecycle, signals, the producer for dead
letters) but reads with aiokafka's batch API (:mod:`infra.runtime.batches`, shared with the impression loop) under its
own consumer group ``<group>.graph-updater``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import faust
import structlog
from aiokafka import ConsumerRecord

from graph_updater.online import GraphUpdater, VectorRecord, parse_click
from graph_updater.store import VectorStore
from graph_updater.train import Refined, RefineJob, run_refinement
from infra.runtime.app import Topics
from infra.runtime.batches import run_batches, send_dead_letter, split_valid
from infra.runtime.monitoring import WorkerMetrics
from infra.runtime.settings import Settings

log = structlog.get_logger("graph_updater")


def updater_group(settings: Settings) -> str:
    """The consumer group of the click loop (separate from faust's own group, which uses another assignor);
    per replica when ``replica_id`` is set, so that every replica reads every click into its own graph."""
    group = f"{settings.consumer_group}.graph-updater"
    return f"{group}.{settings.replica_id}" if settings.replica_id else group


@dataclass
class UpdaterStats:
    """Counters an operator (and the tests and benchmarks) read from a running updater."""

    clicks: int = 0
    dead_letters: int = 0
    batches: int = 0
    upserts: int = 0
    refinements: int = 0
    store_retries: int = 0
    # per refinement, the latest 1,000: its steps and propagation (a thread), and its merge (the loop waits for it)
    refine_steps_ms: deque = field(default_factory=lambda: deque(maxlen=1000), repr=False)
    refine_merge_ms: deque = field(default_factory=lambda: deque(maxlen=1000), repr=False)
    freshness_ms: deque = field(default_factory=lambda: deque(maxlen=200_000), repr=False)


async def upsert_with_retry(store: VectorStore, records: list[VectorRecord], stats: UpdaterStats,
                            max_backoff_s: float = 5.0, chunk: int = 2048) -> None:
    """Upsert until the store accepts: the batch is not committed before, so nothing is lost while it is down.
    Written in chunks with a yield between them, so a large write (a refinement moves most vectors) never
    holds the event loop long enough to miss a heartbeat or stall the scorer sharing it."""
    for start in range(0, len(records), chunk):
        part, backoff = records[start:start + chunk], 0.1
        while True:
            try:
                stats.upserts += store.upsert(part)
                break
            except Exception as exc:  # any store/transport failure: keep the batch, retry
                stats.store_retries += 1
                log.warning("vector_store_upsert_failed", error=repr(exc)[:500], retry_in_s=backoff,
                            records=len(part))
                await asyncio.sleep(backoff)
                backoff = min(max_backoff_s, backoff * 2)
        await asyncio.sleep(0)


def timed_refinement(job: RefineJob, steps: int, min_change: float, cancelled: threading.Event
                     ) -> tuple[Refined, float]:
    """:func:`~graph_updater.train.run_refinement` and its wall time in milliseconds."""
    started = time.perf_counter()
    refined = run_refinement(job, steps, min_change, cancelled=cancelled)
    return refined, (time.perf_counter() - started) * 1e3


class ClickLoop:
    """Consumes ``clicks`` in micro-batches and applies them (see the module docstring)."""

    def __init__(self, topics: Topics, updater: GraphUpdater, store: VectorStore, settings: Settings,
                 stats: UpdaterStats, metrics: WorkerMetrics | None = None) -> None:
        self.topics, self.updater, self.store, self.settings, self.stats = topics, updater, store, settings, stats
        self.metrics = metrics or WorkerMetrics()
        self.refinement: tuple[RefineJob, asyncio.Future] | None = None  # in flight: its copy, its future Refined
        self.stopping = threading.Event()  # set when the loop ends: a refinement in flight stops at its next step

    async def process(self, records: Sequence[ConsumerRecord]) -> None:
        started = time.perf_counter()
        valid, bad = split_valid(records, parse_click)
        clicks = [click for click, _ in valid]
        written = self.stats.upserts
        for record, err in bad:
            await send_dead_letter(self.topics.clicks_dlq, record, err, "click_dead_lettered")
            self.metrics.dead_letters.labels(self.topics.clicks_dlq.get_topic_name()).inc()
        vectors = self.updater.apply(clicks)
        if vectors:
            await upsert_with_retry(self.store, vectors, self.stats)
        done_ms = time.time() * 1000
        self.stats.freshness_ms.extend(done_ms - r.timestamp for r in records)
        await self.refine()
        self.stats.clicks += len(clicks)
        self.stats.dead_letters += len(bad)
        self.metrics.vectors_written.inc(self.stats.upserts - written)
        self.stats.batches += 1
        log.debug("click_batch", clicks=len(clicks), dead_letters=len(bad), vectors=len(vectors),
                  event_ids=[c.event_id for c in clicks[:5]], ms=round((time.perf_counter() - started) * 1e3, 2))

    async def refine(self) -> None:
        """Adopt a finished refinement (its layers merged, the nodes changed since its copy recomputed, the moved
        vectors written), or start one when due: its BPR steps and propagation run in a worker thread on a copy
        of the graph (seconds on a large graph), so the loop goes on applying clicks meanwhile and waits only for
        the merge. One refinement at a time."""
        if self.refinement is not None:
            job, running = self.refinement
            if not running.done():
                return
            self.refinement = None
            try:
                refined, steps_ms = running.result()
            except Exception as exc:  # a failed refinement leaves the graph as the clicks made it
                self.updater.drop_refinement()
                log.warning("graph_refinement_failed", error=repr(exc)[:500])
                return
            started = time.perf_counter()
            moved = self.updater.merge_refined(job, refined)
            merge_ms = (time.perf_counter() - started) * 1e3
            await upsert_with_retry(self.store, moved, self.stats)
            self.stats.refinements += 1
            self.stats.refine_steps_ms.append(steps_ms)
            self.stats.refine_merge_ms.append(merge_ms)
            log.info("graph_refined", steps=self.settings.refine_steps, vectors_moved=len(moved),
                     steps_ms=round(steps_ms, 1), merge_ms=round(merge_ms, 1))
            return
        every = self.settings.refine_every_clicks
        if every and self.updater.clicks_since_refine >= every:
            job = self.updater.refine_job()
            if job is not None:
                s = self.settings
                self.refinement = job, asyncio.ensure_future(
                    asyncio.to_thread(timed_refinement, job, s.refine_steps, s.refine_min_change, self.stopping))

    async def run(self) -> None:
        s = self.settings
        try:
            await run_batches(s, s.topic("clicks"), updater_group(s), s.updater_batch_size, s.updater_batch_wait_ms,
                              self.process, "click", metrics=self.metrics, max_batch_size=s.updater_batch_max)
        finally:  # stopping: nothing will adopt a refinement now, and the process should not wait for its steps
            self.stopping.set()


def register_updater(app: faust.App, topics: Topics, updater: GraphUpdater, store: VectorStore,
                     settings: Settings, stats: UpdaterStats, metrics: WorkerMetrics | None = None) -> ClickLoop:
    """Run a :class:`ClickLoop` as a task of ``app`` (started and cancelled with it)."""
    loop = ClickLoop(topics, updater, store, settings, stats, metrics)

    @app.task
    async def click_loop() -> None:
        await loop.run()

    return loop
