"""The impression loop: micro-batch -> retrieval -> early-exit scoring -> ``ctr-scores`` + ``exit-telemetry``.

Per micro-batch (up to ``scorer_batch_size`` requests, or what arrived within ``scorer_batch_wait_ms``):
1. decode each record; an invalid one (or one whose key is not its user id) is dead-lettered to
   ``impressions.dlq`` with the reason and its original bytes;
2. retrieval for every request (:meth:`Scorer.context`), on the event loop;
3. the model scores all candidates in a worker thread (the loop keeps heartbeating to the group coordinator)
   while the loop polls the next micro-batch and runs its retrieval (step 2), so retrieval and inference
   overlap on two cores; batches still infer, publish and commit in order, one at most in flight;
4. one ``ctr-scores`` message per candidate (key = user id) and one ``exit-telemetry`` message per request
   (key = request id) are sent (:class:`~infra.runtime.outputs.OutputProducer`) and their delivery awaited;
   the next batch's inference starts as soon as this one's ends, not after its delivery (the broker's
   acknowledgements overlap the model instead of adding to every batch);
5. only then are the offsets committed: a scorer that dies mid-batch leaves the batch uncommitted and whoever
   owns the partitions next scores it again. Outputs carry the request id (and item id), so a consumer drops
   re-delivered duplicates by ``(request_id, item_id)`` / ``request_id``.

Replicas share the ``impressions`` partitions through the consumer group ``<group>.scorer``. Like the click loop
it reads with aiokafka's batch API (:mod:`infra.runtime.batches`) inside the faust app that hosts the process and owns
the producer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import structlog
from aiokafka import ConsumerRebalanceListener, ConsumerRecord

from infra.runtime.app import Topics
from infra.runtime.batches import run_batches, send_dead_letter, split_valid
from infra.runtime.monitoring import WorkerMetrics
from infra.runtime.outputs import OutputProducer
from infra.runtime.settings import Settings
from schemas.codec import decode_keyed, encode
from schemas.messages import ExitTelemetry, ImpressionRequest
from scorer.scoring import Inference, RequestContext, Scorer, now_ms

log = structlog.get_logger("scorer")


class ScoringError(RuntimeError):
    """A valid request whose scoring raised: dead-lettered with the error instead of stopping the worker."""


def scorer_group(settings: Settings) -> str:
    return f"{settings.consumer_group}.scorer"


@dataclass
class ScorerStats:
    """Counters an operator (and the tests and benchmarks) read from a running scorer."""

    requests: int = 0
    candidates: int = 0
    dead_letters: int = 0
    batches: int = 0


def parse_request(key: bytes | None, value: bytes | None) -> ImpressionRequest:
    """Decode an ``impressions`` record; its key, when present, must be the user id."""
    return decode_keyed(ImpressionRequest, key, value)


def contexts_of(scorer: Scorer, requests: list[tuple[ImpressionRequest, ConsumerRecord]]) -> list[RequestContext]:
    """Every request's retrieval context, each enqueued at its record's timestamp and taken when its own retrieval
    starts: a request late in a large micro-batch has also waited for the retrieval of those before it, which
    its queue time (and SLO mode's decision to shed its retrieval) must count."""
    return [scorer.context(request, float(record.timestamp), now_ms()) for request, record in requests]


class PartitionLog(ConsumerRebalanceListener):
    """Logs every assignment change: ops see which replica owns which partitions after a rebalance."""

    def __init__(self, replica: str | None) -> None:
        self.replica = replica

    async def on_partitions_revoked(self, revoked) -> None:
        log.info("impression_partitions_revoked", replica=self.replica, partitions=sorted(p.partition for p in revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("impression_partitions_assigned", replica=self.replica,
                 partitions=sorted(p.partition for p in assigned))


class ImpressionLoop:
    """Consumes ``impressions`` in micro-batches and answers them (see the module docstring)."""

    def __init__(self, topics: Topics, scorer: Scorer, settings: Settings, stats: ScorerStats,
                 metrics: WorkerMetrics | None = None) -> None:
        self.topics, self.scorer, self.settings, self.stats = topics, scorer, settings, stats
        self.metrics = metrics or WorkerMetrics()
        self.metrics.serving(scorer.model_version)
        self.last: asyncio.Task | None = None  # the latest batch's infer-and-publish task
        self.last_inferred: asyncio.Event | None = None  # set when that batch's inference has ended
        self.outputs = OutputProducer(settings)  # started and stopped by run()

    async def dead_letter(self, record: ConsumerRecord, err: Exception) -> None:
        await send_dead_letter(self.topics.impressions_dlq, record, err, "impression_dead_lettered")
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(self.topics.impressions_dlq.get_topic_name()).inc()

    async def process(self, records: Sequence[ConsumerRecord]) -> asyncio.Task | None:
        """Dead-letter the invalid records; build the valid ones' contexts (retrieval, on the event loop) and
        return the task that infers and publishes them once the previous batch's task is done. Inference runs in
        a thread, so :func:`~infra.runtime.batches.run_batches` polls the next batch and builds its contexts
        meanwhile (the two cores overlap retrieval with the model). If answering the batch raises (a request
        that passes validation but breaks scoring), the requests are retried one by one and those that still
        fail are dead-lettered as ``ScoringError``: one poison request neither stops the worker nor takes its
        batch down."""
        requests, bad = split_valid(records, parse_request)
        for record, err in bad:
            await self.dead_letter(record, err)
        if not requests:
            return None
        scorer = self.scorer  # one model per batch: a hot reload meanwhile takes effect from the next batch
        try:
            contexts: list[RequestContext] | Exception = contexts_of(scorer, requests)
        except Exception as exc:
            contexts = exc
        inferred = asyncio.Event()
        self.last = asyncio.ensure_future(self.complete(scorer, requests, contexts, self.last, self.last_inferred,
                                                        inferred))
        self.last_inferred = inferred
        return self.last

    async def complete(self, scorer: Scorer, requests: list[tuple[ImpressionRequest, ConsumerRecord]],
                       contexts: list[RequestContext] | Exception, previous: asyncio.Task | None,
                       previous_inferred: asyncio.Event | None, inferred: asyncio.Event) -> None:
        """Infer ``contexts`` once the previous batch's inference has ended (one inference at a time, in batch
        order), set ``inferred``, then publish after ``previous`` has published (outputs in batch order); or,
        when building the contexts or answering failed, answer the requests one by one (see :meth:`process`;
        those retries infer beside the next batch's inference: a rare path, not worth holding the next batch)."""
        try:
            if previous_inferred is not None:
                await previous_inferred.wait()
            if isinstance(contexts, Exception):
                raise contexts
            inference = await asyncio.to_thread(scorer.infer, contexts)
        except Exception as exc:
            inference = exc
        finally:
            inferred.set()
        if previous is not None:
            await previous  # never raises: failures are handled below, in its own call
        try:
            if isinstance(inference, Exception):
                raise inference
            await self.publish(scorer, requests, contexts, inference)
        except Exception as exc:
            log.error("impression_batch_failed", error=repr(exc)[:500], requests=len(requests))
            for one in requests:
                try:
                    await self.answer([one])
                except Exception as err:
                    await self.dead_letter(one[1], ScoringError(repr(err)[:2000]))

    async def answer(self, requests: list[tuple[ImpressionRequest, ConsumerRecord]]) -> None:
        """Build the contexts of ``requests`` and publish their answers (one go, no pipelining)."""
        scorer = self.scorer
        contexts = contexts_of(scorer, requests)
        await self.publish(scorer, requests, contexts, await asyncio.to_thread(scorer.infer, contexts))

    async def publish(self, scorer: Scorer, requests: list[tuple[ImpressionRequest, ConsumerRecord]],
                      contexts: list[RequestContext], inference: Inference) -> None:
        """Produce every score and telemetry record of an inferred batch and await their delivery."""
        produced = now_ms()
        records, answered = [], []
        scores_topic, telemetry_topic = self.topics.scores.get_topic_name(), self.topics.telemetry.get_topic_name()
        for (scores, telemetry), (_, record) in zip(scorer.outputs(contexts, inference, produced), requests,
                                                    strict=True):
            answered.append((telemetry, float(record.timestamp)))
            records += [(scores_topic, score.user_id.encode(), encode(score)) for score in scores]
            records.append((telemetry_topic, telemetry.request_id.encode(), encode(telemetry)))
        delivered = await self.outputs.queue_all(records)
        scorer.observe_delivery(now_ms() - inference.ended_ms)
        await asyncio.gather(*delivered)
        self.stats.requests += len(answered)
        self.stats.candidates += sum(len(t.candidates) for t, _ in answered)
        self.observe(answered, inference.inference_ms, now_ms())
        self.stats.batches += 1
        log.debug("impression_batch", requests=len(requests), request_ids=[r.request_id for r, _ in requests[:5]],
                  inference_ms=round(inference.inference_ms, 1))

    def observe(self, answered: list[tuple[ExitTelemetry, float]], inference_ms: float, sent_ms: float) -> None:
        """Per request (its telemetry and record timestamp): latency to outputs delivered, exit layers, degraded
        flags; and the micro-batch's inference time."""
        m = self.metrics
        m.inference.observe(inference_ms / 1000.0)
        for telemetry, produced_ms in answered:
            m.score_latency.observe(max(0.0, sent_ms - produced_ms) / 1000.0)
            for candidate in telemetry.candidates:
                m.exit_layer.observe(candidate.exit_layer)
            for flag in telemetry.degraded:
                m.degraded.labels(str(flag)).inc()

    async def run(self) -> None:
        s = self.settings
        await self.outputs.start()
        try:
            await run_batches(s, s.topic("impressions"), scorer_group(s), s.scorer_batch_size,
                              s.scorer_batch_wait_ms, self.process, "impression", PartitionLog(s.replica_id),
                              self.metrics)
        finally:
            await self.outputs.stop()


def register_scorer(app: faust.App, topics: Topics, scorer: Scorer, settings: Settings,
                    stats: ScorerStats, metrics: WorkerMetrics | None = None) -> ImpressionLoop:
    """Run an :class:`ImpressionLoop` as a task of ``app`` (started and cancelled with it)."""
    loop = ImpressionLoop(topics, scorer, settings, stats, metrics)

    @app.task
    async def impression_loop() -> None:
        await loop.run()

    return loop
