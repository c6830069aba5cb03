"""Partitioned graph updaters: N processes split the click path with Kafka's partitioning and transactions.

Every process runs one :class:`ShardLoop` in the consumer group ``<group>.graph-shards``, subscribed to
``clicks`` (keyed by user) and ``clicks-by-item`` (keyed by item); Kafka's group assignment gives each process a
share of both, and with it the users and items it owns (:mod:`graph_updater.shard`). Per micro-batch, inside one
Kafka transaction of the process's transactional producer (``transactional.id`` =
``<group>.graph-shards.<replica_id>``, so a restarted process fences its dead predecessor):
1. invalid records go to ``clicks.dlq`` with their bytes and the reason;
2. the owned users' clicks update their histories and edges and are forwarded to ``clicks-by-item``; the owned
   items' forwarded clicks update their counts and edges; the changed nodes are refreshed (radius 0);
3. the owned nodes that reacted are written to the vector store (retried until it accepts);
4. the recomputed nodes' layers go to ``node-layers`` (compacted), which every process reads to keep the other
   owners' latest layers;
5. the batch's input offsets are committed in the same transaction (``send_offsets_to_transaction``).
A forward is therefore produced exactly once per applied click, and consumers read with ``read_committed``.

A change of assignment (start, a process joining, leaving or dying) rebuilds the process's state before its next
batch: the checkpoint (read once per process, as arrays) pruned to the new share, every published layer, then
the committed records of its partitions of both topics replayed (no forwards: they were committed with their
clicks), the replayed nodes refreshed, the points of the nodes it did not own before written whole (those it
kept hold their committed state already); the consumer then seeks each of its partitions to where
that replay stopped, and records fetched before are dropped (aiokafka does not reset the position of a partition
kept across a rebalance: dropping such records without the seek lost them, measured under load). With a private
(embedded) store the points of nodes it no longer owns are deleted; with a shared Qdrant server their new owner
rewrites them. A revocation waits for the batch in flight to commit, never for a rebuild (its CPU work runs in a
thread, so heartbeats go on: a rebuild longer than the session timeout that held the group's rebalance cost the
membership and started another one, measured; Python's collector is off while a share is built, 2.3x faster).
Known limit: a process stalled past the session timeout may commit the batch it holds after its partitions
moved (aiokafka's ``send_offsets_to_transaction`` carries no group generation, so the broker cannot fence it as
KIP-447 does for the Java client); its successor then applies that batch too.
No BPR refinement runs in this mode (it would need the whole graph in one place).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError

from graph_updater.agent import UpdaterStats, upsert_with_retry
from graph_updater.checkpoint import CheckpointArrays
from graph_updater.graph import ITEM, USER
from graph_updater.online import parse_click
from graph_updater.recovery import committed_offsets
from graph_updater.service import initial_arrays, store_for
from graph_updater.shard import ShardUpdater, parse_item_click, partition_of
from graph_updater.store import VectorStore
from infra.runtime.app import CLICKS, CLICKS_BY_ITEM, DLQ_SUFFIX, NODE_LAYERS, create_topics
from infra.runtime.batches import dead_letter_of, log_dead_letter, partition_lags, split_valid
from infra.runtime.heap import freeze_long_lived
from infra.runtime.monitoring import HealthServer, WorkerMetrics
from infra.runtime.settings import Settings
from infra.runtime.topic_reads import partition_ids, read_up_to
from schemas.codec import encode

log = structlog.get_logger("graph_updater")
METRICS_LOOP = "shard"


class PartitionCountError(ValueError):
    """``clicks`` and ``clicks-by-item`` differ in partition count: a user's and an item's owners would not
    follow the same partitioner arithmetic."""


def shard_group(settings: Settings) -> str:
    """The consumer group the partitioned updaters share (not the one-process updater's: their offsets differ)."""
    return f"{settings.consumer_group}.graph-shards"


class ShardLoop(ConsumerRebalanceListener):
    """One partitioned updater (see the module docstring); ``initial()`` reads the whole checkpoint's arrays (once:
    every rebuild prunes them to the share), ``store`` is where it writes (``private``: nobody else writes it)."""

    def __init__(self, settings: Settings, store: VectorStore, initial: Callable[[], CheckpointArrays],
                 private: bool) -> None:
        self.settings, self.store, self.initial, self.private = settings, store, initial, private
        self.checkpoint: CheckpointArrays | None = None
        self.group = shard_group(settings)
        self.topics = {name: settings.topic(name) for name in (CLICKS, CLICKS_BY_ITEM, NODE_LAYERS)}
        self.stats = UpdaterStats()
        self.metrics = WorkerMetrics()  # the click path's series under loop="shard" (infra.runtime.monitoring)
        self.rebuilds = 0
        self.shard: ShardUpdater | None = None
        self.lock = asyncio.Lock()  # held by a batch from its transaction's start to its commit
        self.rebuild_due = False
        self.epoch = 0  # revocations and rebuilds so far: a batch fetched before the latest one is dropped
        self.partitions = self.layer_partitions = 0  # of clicks and clicks-by-item (equal), of node-layers
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.layer_reader: AIOKafkaConsumer | None = None

    # ---- ConsumerRebalanceListener --------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked) -> None:
        async with self.lock:  # the batch in flight commits before its partitions move
            self.epoch += 1  # records fetched before this are not processed

    async def on_partitions_assigned(self, assigned) -> None:
        self.rebuild_due = True
        log.info("graph_shard_assigned", partitions=len(assigned))  # graph_shard_ready follows its rebuild

    # ---- the loop -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        s = self.settings
        await create_topics(s, partitioned=True)
        counts = {name: len(await partition_ids(s.kafka_bootstrap, t)) for name, t in self.topics.items()}
        if counts[CLICKS] != counts[CLICKS_BY_ITEM]:
            raise PartitionCountError(
                f"{self.topics[CLICKS]} has {counts[CLICKS]} partitions but {self.topics[CLICKS_BY_ITEM]} has "
                f"{counts[CLICKS_BY_ITEM]}: partitioned updaters need equal counts; recreate "
                f"{self.topics[CLICKS_BY_ITEM]} with {counts[CLICKS]} partitions")
        self.partitions, self.layer_partitions = counts[CLICKS], counts[NODE_LAYERS]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=s.updater_batch_size,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(500, int(s.session_timeout_s * 250)))
        self.consumer.subscribe([self.topics[CLICKS], self.topics[CLICKS_BY_ITEM]], listener=self)
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, enable_idempotence=True,
                                         transactional_id=f"{self.group}.{s.replica_id or socket.gethostname()}",
                                         transaction_timeout_ms=max(10_000, int(s.session_timeout_s * 2000)),
                                         max_batch_size=1 << 20)
        self.layer_reader = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                             enable_auto_commit=False, isolation_level="read_committed")
        await self.producer.start()
        await self.layer_reader.start()
        self.layer_reader.assign([TopicPartition(self.topics[NODE_LAYERS], p) for p in range(counts[NODE_LAYERS])])
        await self.consumer.start()
        try:
            while True:
                while self.rebuild_due:  # not under the lock: a revocation meanwhile need not wait for it
                    await self.rebuild()
                epoch = self.epoch
                batches = await self.consumer.getmany(timeout_ms=s.updater_batch_wait_ms,
                                                      max_records=s.updater_batch_size)
                async with self.lock:
                    if self.epoch != epoch or self.rebuild_due:
                        continue  # fetched under an assignment that has ended: its owner takes them from the commits
                    await self.adopt_published()
                    if any(batches.values()):
                        await self.process(batches)
        finally:
            for client in (self.consumer, self.layer_reader, self.producer):
                with contextlib.suppress(Exception):
                    await client.stop()

    async def adopt_published(self, to_end: bool = False) -> None:
        """Take the layers other owners published since the last call (``to_end``: read from the topic's start
        up to its current end, as a rebuild does)."""
        reader, shard = self.layer_reader, self.shard
        parts = list(reader.assignment())
        if to_end:
            await reader.seek_to_beginning(*parts)
            ends = await reader.end_offsets(parts)
            pending = {tp for tp in parts if await reader.position(tp) < ends[tp]}
            while pending:
                got = await reader.getmany(*pending, timeout_ms=500)
                await asyncio.to_thread(shard.adopt, [(r.key.decode(), r.value) for rs in got.values() for r in rs])
                pending = {tp for tp in pending if await reader.position(tp) < ends[tp]}
            return
        got = await reader.getmany(timeout_ms=0)
        shard.adopt((r.key.decode(), r.value) for rs in got.values() for r in rs)

    async def process(self, batches: dict) -> None:
        clicks_topic, items_topic = self.topics[CLICKS], self.topics[CLICKS_BY_ITEM]
        click_records = [r for tp, rs in batches.items() if tp.topic == clicks_topic for r in rs]
        item_records = [r for tp, rs in batches.items() if tp.topic == items_topic for r in rs]
        clicks, bad = split_valid(click_records, parse_click)
        item_clicks, bad_items = split_valid(item_records, parse_item_click)
        producer = self.producer
        await producer.begin_transaction()
        try:
            for record, err in bad + bad_items:
                key, letter = dead_letter_of(record, err)
                await producer.send(self.settings.topic(CLICKS + DLQ_SUFFIX), encode(letter), key=key)
                log_dead_letter("click_dead_lettered", record, letter)
            forwards, records, layers = self.shard.step([c for c, _ in clicks], [c for c, _ in item_clicks])
            await self.send_keyed(items_topic, self.partitions, ((f.item_id, encode(f)) for f in forwards))
            await upsert_with_retry(self.store, records, self.stats)
            await self.send_keyed(self.topics[NODE_LAYERS], self.layer_partitions, layers.items())
            offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs}
            await producer.send_offsets_to_transaction(offsets, self.group)
            await producer.commit_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise  # the state now runs ahead of what was committed: the process must stop (a restart rebuilds)
        self.stats.clicks += len(clicks)
        self.stats.dead_letters += len(bad) + len(bad_items)
        self.stats.batches += 1
        done_ms = time.time() * 1000
        self.stats.freshness_ms.extend(done_ms - r.timestamp for r in click_records)
        self.metrics.batch(METRICS_LOOP, len(click_records) + len(item_records))
        self.metrics.vectors_written.inc(len(records))
        if bad or bad_items:
            self.metrics.dead_letters.labels(self.settings.topic(CLICKS + DLQ_SUFFIX)).inc(len(bad) + len(bad_items))
        self.metrics.partitions(METRICS_LOOP, await partition_lags(self.consumer))

    async def send_keyed(self, topic: str, partitions: int, records: Iterable[tuple[str, bytes]]) -> None:
        """Send ``(key, value)`` records to ``topic`` (of ``partitions``) in the open transaction, each where Kafka's
        default partitioner puts its key, filling one producer batch per partition at a time: aiokafka's
        per-record ``send`` costs ~30 µs, appending to a batch a few."""
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value in records:
            by_partition[partition_of(key, partitions)].append((key.encode(), value))
        for partition, pending in by_partition.items():
            batch = self.producer.create_batch()
            for key, value in pending:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                    await self.producer.send_batch(batch, topic, partition=partition)
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            await self.producer.send_batch(batch, topic, partition=partition)

    async def rebuild(self) -> None:
        """State for the current assignment (see the module docstring)."""
        self.rebuild_due = False
        self.epoch += 1
        started = time.perf_counter()
        assigned = self.consumer.assignment()
        users = {tp.partition for tp in assigned if tp.topic == self.topics[CLICKS]}
        items = {tp.partition for tp in assigned if tp.topic == self.topics[CLICKS_BY_ITEM]}
        before = self.shard
        gc.unfreeze()  # the previous share's objects may be collected again once dropped
        gc.disable()  # no collection passes over the share's objects while they are built: 2.3x faster to build
        try:
            replayed = await self.rebuild_share(users, items, before)
        finally:
            gc.enable()
        if before is not None and self.private:  # points of nodes another process owns now
            shard = self.shard
            for kind, gone in ((USER, set(before.histories) - set(shard.histories)),
                               (ITEM, set(before.item_reactions) - set(shard.item_reactions))):
                self.store.delete(kind, sorted(gone))
        del before
        freeze_long_lived()  # the rebuilt shard: millions of long-lived objects
        self.rebuilds += 1
        log.info("graph_shard_ready", user_partitions=sorted(users), item_partitions=sorted(items),
                 users=len(self.shard.histories), items=len(self.shard.item_reactions), replayed=replayed,
                 seconds=round(time.perf_counter() - started, 2))

    async def rebuild_share(self, users: set[int], items: set[int], before: ShardUpdater | None) -> int:
        """Build the share of ``users`` / ``items`` partitions, write the points of the nodes ``before`` (the
        previous share) did not own and publish its layers; return how many committed records were replayed.
        The nodes both shares own keep their points: every batch the previous share applied was committed (a
        revocation waits for the batch in flight; a failed one stops the process), and the rebuild replays exactly
        the committed records, so the store holds their current payloads, and their vectors as the live process
        computed them. CPU-heavy steps run in a thread: the event loop keeps the group's heartbeats going (a
        rebuild longer than the session timeout would otherwise cost the membership and start another
        rebalance)."""
        s = self.settings
        if self.checkpoint is None:
            self.checkpoint = await asyncio.to_thread(self.initial)
        self.shard = shard = await asyncio.to_thread(ShardUpdater, self.checkpoint, users, items, self.partitions,
                                                     s.payload_recent_items)
        await self.adopt_published(to_end=True)
        replayed, changed = 0, set()
        for topic, parse in ((CLICKS, parse_click), (CLICKS_BY_ITEM, parse_item_click)):
            mine = users if topic == CLICKS else items
            ends = {p: o for p, o in (await committed_offsets(s.kafka_bootstrap, self.group, self.topics[topic])
                                      ).items() if p in mine and o > 0}
            for p in mine:  # consume from exactly where the replay stops (records fetched before are dropped)
                tp = TopicPartition(self.topics[topic], p)
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile: the next rebuild seeks
                    if p in ends:
                        self.consumer.seek(tp, ends[p])
                    else:
                        await self.consumer.seek_to_beginning(tp)
            if not ends:  # (a group-less consumer stopped right after its start raises CancelledError)
                continue
            async for records in read_up_to(s.kafka_bootstrap, self.topics[topic], ends,
                                            isolation_level="read_committed"):
                valid = [m for m, _ in split_valid(records, parse)[0]]
                if topic == CLICKS:
                    changed |= (await asyncio.to_thread(shard.apply_users, valid))[2]
                else:
                    changed |= (await asyncio.to_thread(shard.apply_items, valid))[1]
                replayed += len(valid)
        recomputed = await asyncio.to_thread(shard.graph.refresh, changed, 0)
        self.store.ensure_collections(shard.graph.dim)
        held = set() if before is None else {before.graph.keys[v] for v in before.owned_nodes()}
        acquired = [v for v in shard.owned_nodes() if shard.graph.keys[v] not in held]
        records = await asyncio.to_thread(shard.records, acquired, True)
        await upsert_with_retry(self.store, records, self.stats)
        async with self.producer.transaction():
            await self.send_keyed(self.topics[NODE_LAYERS], self.layer_partitions,
                                  shard.layer_values(recomputed).items())
        return replayed


async def run_shard(settings: Settings) -> None:
    """``exitrec graph-updater --partitioned``: one :class:`ShardLoop` until SIGINT or SIGTERM (the batch in
    flight is aborted, its offsets not committed: the partitions' next owner applies it)."""
    store = store_for(settings)
    loop = ShardLoop(settings, store, lambda: initial_arrays(settings), private=settings.qdrant_url is None)
    health = None
    if settings.metrics_port is not None:  # /metrics, /healthz; /readyz once its share is rebuilt
        health = HealthServer(loop.metrics, [("share_rebuilt", lambda: loop.shard is not None and not loop.rebuild_due),
                                             ("store_reachable", lambda: store.count(USER) >= 0)],
                              port=settings.metrics_port)
        await health.start()
    task = asyncio.ensure_future(loop.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        fresh = list(loop.stats.freshness_ms) or [float("nan")]
        log.info("graph_shard_stopped", clicks=loop.stats.clicks, rebuilds=loop.rebuilds,
                 freshness_p50_ms=round(float(np.percentile(fresh, 50)), 1),
                 freshness_p99_ms=round(float(np.percentile(fresh, 99)), 1))
    finally:
        if health is not None:
            await health.stop()
        store.close()
