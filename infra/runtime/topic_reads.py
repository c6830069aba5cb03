"""Reading a topic from its beginning up to given offsets, group-less (recovery, snapshots), and its partitions.

:func:`read_up_to` is what a restart (the updater's committed clicks) and a ``--from-topic`` snapshot (the topics'
current ends) both need: every record of partition ``p`` below ``ends[p]``, batch by batch, in offset order per
partition, without joining a consumer group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def partition_ids(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (from the broker's metadata)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [p["partition"] for t in described if t["topic"] == topic for p in t["partitions"]]
    if not found:
        raise RuntimeError(f"topic {topic} has no partitions (not created yet?)")
    return sorted(found)


async def read_up_to(bootstrap: str, topic: str, ends: Mapping[int, int] | None = None,
                     batch_size: int = 4096, isolation_level: str = "read_uncommitted"
                     ) -> AsyncIterator[list[ConsumerRecord]]:
    """Batches of the records of ``topic`` below ``ends[partition]`` (None: each partition's end when called);
    ``isolation_level="read_committed"`` for a topic written in transactions (aborted records skipped)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                isolation_level=isolation_level)
    await consumer.start()
    try:
        if ends is None:
            partitions = [TopicPartition(topic, p) for p in await partition_ids(bootstrap, topic)]
            ends = {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items()}
        partitions = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if await consumer.position(tp) < ends[tp.partition]}
        while remaining:
            batch = []
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch_size)).items():
                for record in records:
                    if record.offset >= ends[tp.partition]:
                        remaining.discard(tp)
                        break
                    batch.append(record)
            yield batch
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp.partition]}
    finally:
        await consumer.stop()


async def committed_records(bootstrap: str, topic: str) -> tuple[int, dict[int, int]]:
    """How many records of ``topic`` (written in transactions) are committed now, and per partition the offset
    after its last one: where a group that has consumed them all has its committed offset (a transaction's
    commit marker takes an offset of its own, so a partition's end lies beyond that)."""
    count, after = 0, {}
    async for records in read_up_to(bootstrap, topic, None, isolation_level="read_committed"):
        count += len(records)
        for record in records:
            after[record.partition] = record.offset + 1
    return count, after
