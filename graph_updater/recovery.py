"""Rebuild the updater's state after a restart from its checkpoint and the click log (Kafka is the record).

The consumer group's committed offsets mark the clicks whose outputs were written. On start the updater
re-reads ``clicks`` from the beginning up to those offsets (exclusive) with a group-less consumer, applies the
valid ones to the graph (no upserts: they were written before), recomputes every layer by full propagation,
then upserts every vector once (an embedded ``:memory:`` store starts empty) and hands over to the click loop,
which resumes at the committed offsets. Clicks are applied idempotently (:mod:`graph_updater.online`), so a
click delivered twice cannot count twice. The ``clicks`` topic is therefore created with unlimited retention.

**What a restart guarantees.** The recovered state is a function of the checkpoint and the set of committed
clicks alone, whatever the batch boundaries were: edges, reaction histories, counts and payloads equal a
one-pass application of those clicks; every new node's base embedding is the fold-in from its trained
neighbours in the final graph; every vector is the exact LightGCN propagation of those base embeddings
(tested against that reference, store contents included). Two things the live process had are not
reproduced: its vectors were refreshed incrementally (radius 0, within 1% cosine of exact for a new node), and
its BPR refinements since the checkpoint moved base embeddings in an order the log does not record; a restart
drops both and returns to the exact propagation (the test measures and bounds how far the live vectors were
from it). Retraining the checkpoint (``exitrec train-graph``) is what keeps that drift small.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from graph_updater.online import GraphUpdater, parse_click
from infra.runtime.topic_reads import read_up_to
from schemas.codec import InvalidMessage


async def committed_offsets(bootstrap: str, group: str, topic: str,
                            admin: AIOKafkaAdminClient | None = None) -> dict[int, int]:
    """Partition -> committed offset of ``group`` on ``topic`` (partitions without a commit are absent). Pass a
    started ``admin`` to poll repeatedly without a connection per call."""
    own = admin is None
    if own:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
    try:
        for attempt in range(60):  # the coordinator is unavailable while __consumer_offsets is being created
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                if attempt == 59:
                    raise
                await asyncio.sleep(0.5)
    finally:
        if own:
            await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def replay_committed(bootstrap: str, group: str, topic: str, updater: GraphUpdater,
                           batch_size: int = 4096) -> int:
    """Apply every click the group has committed on ``topic`` to ``updater``; return how many were applied."""
    targets = await committed_offsets(bootstrap, group, topic)
    if not targets:
        return 0
    applied = 0
    async for records in read_up_to(bootstrap, topic, targets, batch_size):
        clicks = []
        for record in records:
            try:
                clicks.append(parse_click(record.key, record.value))
            except InvalidMessage:
                continue  # it was dead-lettered when first consumed
        updater.update(clicks)
        applied += len(clicks)
    return applied
