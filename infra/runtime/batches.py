"""The micro-batch mechanics the two input loops share (``clicks``, ``impressions``), apart from what a batch does.

- :func:`split_valid`: decode every record with the loop's parser into ``(message, record)`` pairs, and
  ``(record, error)`` pairs for the ones that are not valid;
- :func:`dead_letter_of` / :func:`log_dead_letter`: the dead-letter record of a failed input and its log line
  (also what the partitioned graph updaters send inside their transactions);
- :func:`send_dead_letter`: produce the dead-letter record of a failed input (original bytes, reason), await its
  delivery, log it;
- :func:`run_batches`: an aiokafka consumer in a group with manual commits: ``getmany`` up to ``batch_size``
  records or ``wait_ms`` (under a backlog the cap grows, up to ``max_batch_size``), ``process(records)``, then
  commit the batch's offsets, so a committed offset never runs ahead of the outputs. A commit refused because the
  group rebalanced meanwhile is logged, not fatal: the batch is delivered again to the partitions' new owner
  (clicks apply idempotently; scores are deduplicated by id).

Both loops read with aiokafka's batch API inside the faust app that hosts the process: faust's per-event stream
machinery tops out near 5,000 events/s on a 2-core machine even with an empty body, against ~200,000 records/s
for ``getmany`` + commit (``bench/results/graph.json``, ``consume_*`` keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import faust
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from infra.runtime.monitoring import WorkerMetrics
from infra.runtime.settings import Settings
from schemas.codec import InvalidMessage, dead_letter, encode
from schemas.messages import DEAD_LETTER_KEY_BYTES, DeadLetter

log = structlog.get_logger("worker")
M = TypeVar("M")


def split_valid(records: Sequence[ConsumerRecord], parse: Callable[[bytes | None, bytes | None], M]
                ) -> tuple[list[tuple[M, ConsumerRecord]], list[tuple[ConsumerRecord, Exception]]]:
    """``(message, record)`` for every record ``parse(key, value)`` accepts, ``(record, error)`` for the rest."""
    good, bad = [], []
    for record in records:
        try:
            good.append((parse(record.key, record.value), record))
        except InvalidMessage as err:
            bad.append((record, err))
    return good, bad


def dead_letter_of(record: ConsumerRecord, err: Exception) -> tuple[bytes | None, DeadLetter]:
    """The dead-letter record of ``record``: its key (the original one, cut like the letter's copy of it) and
    the letter."""
    letter = dead_letter(record.topic, record.partition, record.offset, record.key, record.value, err)
    return (None if record.key is None else record.key[:DEAD_LETTER_KEY_BYTES]), letter


def log_dead_letter(event: str, record: ConsumerRecord, letter: DeadLetter) -> None:
    log.warning(event, topic=record.topic, partition=record.partition, offset=record.offset,
                error_class=letter.error_class, reason=letter.error_message[:300])


async def send_dead_letter(topic: faust.TopicT, record: ConsumerRecord, err: Exception, event: str) -> None:
    """Dead-letter ``record`` on ``topic`` (:func:`dead_letter_of`) and wait until it is delivered."""
    key, letter = dead_letter_of(record, err)
    await (await topic.send(key=key, value=encode(letter)))
    log_dead_letter(event, record, letter)


async def partition_lags(consumer: AIOKafkaConsumer) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> end offset - position`` for every assigned partition whose end is known."""
    out = {}
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is not None:
            out[(tp.topic, tp.partition)] = max(0, end - await consumer.position(tp))
    return out


async def run_batches(settings: Settings, topic: str, group: str, batch_size: int, wait_ms: int,
                      process: Callable[[list[ConsumerRecord]], Awaitable[Awaitable[None] | None]], name: str,
                      listener: ConsumerRebalanceListener | None = None, metrics: WorkerMetrics | None = None,
                      max_batch_size: int | None = None) -> None:
    """Consume ``topic`` in group ``group`` batch by batch until cancelled (see the module docstring); ``name``
    prefixes the log events and labels the loop's series in ``metrics`` (lag per partition after every poll,
    records and batch sizes).

    ``process(records)`` either finishes the batch (returns None) or starts it and returns an awaitable that
    completes when the batch's outputs exist (a two-stage pipeline: the impression loop builds the contexts of
    batch n+1 while batch n is in inference). While batch n is in flight the loop polls for the next records: if
    they come first, batch n+1 is started and only then is batch n awaited; if batch n's outputs come first, it
    is committed at once. So at most two batches are started and uncommitted, batches commit in order, and a
    committed offset still never runs ahead of the outputs.

    Backlog: a poll that comes back full (``cap`` records) doubles the next poll's cap, up to ``max_batch_size``
    (default: ``batch_size``, no growth); one with fewer than ``batch_size`` records resets it, and one in between
    (the consumer had fetched less than the cap so far) keeps it. A loop behind its input then works in fewer,
    larger batches (the click path: fewer point writes per click, as a user or item clicked twice in a batch is
    written once), and one keeping up keeps its small batches and their latency."""
    largest = max(batch_size, max_batch_size or batch_size)
    cap = batch_size
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=largest,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=max(500, int(settings.session_timeout_s * 250)))
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    in_flight: tuple[asyncio.Future, dict[TopicPartition, int], int] | None = None
    poll: asyncio.Future | None = None

    async def commit(offsets: dict[TopicPartition, int], n: int) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:  # partitions moved to another member
            log.warning(f"{name}_commit_skipped", error=repr(exc)[:300], records=n)
        if metrics is not None:
            metrics.batch(name, n)

    async def settle() -> None:
        """Wait for the in-flight batch's outputs, then commit it."""
        nonlocal in_flight
        outputs, offsets, n = in_flight
        in_flight = None
        await outputs
        await commit(offsets, n)

    try:
        while True:
            poll = asyncio.ensure_future(consumer.getmany(timeout_ms=wait_ms, max_records=cap))
            if in_flight is not None:  # whichever comes first: the next records or the in-flight batch's outputs
                await asyncio.wait({poll, in_flight[0]}, return_when=asyncio.FIRST_COMPLETED)
                if in_flight[0].done():
                    await settle()
            batches = await poll
            records = [r for part in batches.values() for r in part]
            if len(records) >= cap:
                cap = min(2 * cap, largest)
            elif len(records) < batch_size:
                cap = batch_size
            started = await process(records) if records else None
            if in_flight is not None and records:  # the next batch is started: now wait for this one
                await settle()
            if records:
                offsets = {TopicPartition(tp.topic, tp.partition): part[-1].offset + 1
                           for tp, part in batches.items() if part}
                if started is None:
                    await commit(offsets, len(records))
                else:
                    in_flight = (asyncio.ensure_future(started), offsets, len(records))
            if metrics is not None:
                metrics.partitions(name, await partition_lags(consumer))
    finally:
        if poll is not None:
            poll.cancel()
        await consumer.stop()
