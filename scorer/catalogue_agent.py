"""The items loop: keeps a worker's :class:`~scorer.catalogue.LiveCatalogue` from the compacted ``items`` topic.

Every replica needs the whole catalogue, so each reads every partition of ``items`` itself under its own
consumer group ``<group>.items.<replica_id>``, and the catalogue lives in memory:

1. at start, the group's committed offsets are read, every partition is assigned and read from its beginning
   (compaction keeps the log about one record per item); records below the committed offset are applied again
   silently (their invalid ones were dead-lettered the first time);
2. from the committed offset on, each record is applied (``put``, or ``drop`` for a tombstone) or, when invalid
   (bad JSON, schema, a key that is not the item id), dead-lettered to ``items.dlq`` with its reason; the batch's
   offsets are committed after its dead letters are delivered.

:attr:`CatalogueLoop.loaded` turns true once the loop has read up to the end offsets it saw at start (a
readiness check: prompts before that may still say ``item <id>`` for items the topic names).
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from graph_updater.recovery import committed_offsets
from infra.runtime.app import Topics
from infra.runtime.batches import partition_lags, send_dead_letter
from infra.runtime.monitoring import WorkerMetrics
from infra.runtime.settings import Settings
from infra.runtime.topic_reads import partition_ids
from schemas.codec import InvalidMessage, decode_item
from scorer.catalogue import LiveCatalogue

log = structlog.get_logger("scorer")


def items_group(settings: Settings) -> str:
    return f"{settings.consumer_group}.items.{settings.replica_id or 'single'}"


class CatalogueLoop:
    """Reads ``items`` into ``catalogue`` until cancelled (see the module docstring)."""

    def __init__(self, topics: Topics, catalogue: LiveCatalogue, settings: Settings,
                 metrics: WorkerMetrics | None = None) -> None:
        self.topics, self.catalogue, self.settings = topics, catalogue, settings
        self.metrics = metrics or WorkerMetrics()
        self.loaded = False
        self.applied = self.deleted = self.dead_letters = 0

    async def apply(self, record, replaying: bool) -> None:
        try:
            item = decode_item(record.key, record.value)
        except InvalidMessage as err:
            if not replaying:
                await send_dead_letter(self.topics.items_dlq, record, err, "item_dead_lettered")
                self.dead_letters += 1
                self.metrics.dead_letters.labels(self.topics.items_dlq.get_topic_name()).inc()
            return
        if item is None:
            self.catalogue.drop(record.key.decode(errors="replace"))
            self.deleted += 1
        else:
            self.catalogue.put(item)
            self.applied += 1

    async def run(self, retry_s: float = 5.0) -> None:
        """:meth:`follow` until cancelled; a broker error is logged and the loop starts over (the catalogue keeps
        what it has meanwhile, and scoring never waits for it)."""
        while True:
            try:
                await self.follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("catalogue_loop_failed", error=repr(exc)[:500], retry_in_s=retry_s)
                await asyncio.sleep(retry_s)

    async def follow(self) -> None:
        s = self.settings
        topic, group = s.topic("items"), items_group(s)
        committed = await committed_offsets(s.kafka_bootstrap, group, topic)
        partitions = [TopicPartition(topic, p) for p in await partition_ids(s.kafka_bootstrap, topic)]
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=group, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            self.loaded = all(end == 0 for end in ends.values())
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=4096)
                for tp, records in batches.items():
                    for record in records:
                        await self.apply(record, record.offset < committed.get(tp.partition, 0))
                fresh = {tp: records[-1].offset + 1 for tp, records in batches.items()
                         if records and records[-1].offset + 1 > committed.get(tp.partition, 0)}
                if fresh:
                    await consumer.commit(fresh)
                    committed.update({tp.partition: offset for tp, offset in fresh.items()})
                if batches:
                    self.metrics.batch("item", sum(len(r) for r in batches.values()))
                self.metrics.partitions("item", await partition_lags(consumer))
                if not self.loaded and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                    self.loaded = True
                    log.info("catalogue_loaded", items=len(self.catalogue.live), applied=self.applied,
                             deleted=self.deleted, dead_letters=self.dead_letters)
        finally:
            await consumer.stop()
