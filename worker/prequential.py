"""Drive a prequential replay through running workers: each impression is answered before its own click exists.

For time-ordered rows of a dataset: the rows' impression requests (:func:`~worker.replay.impressions_of`) are
published in order, paced to ``rate`` requests/s (open loop; ``None`` = all at once, which measures capacity),
and each request's clicks (its rows' labels) are published only once its ``exit-telemetry`` answer has been
read. The scorer therefore never sees a row's own outcome, and the graph updater folds it in right after, as in
production. What the run measures here: requests/s (answered / first send -> last answer) and impression ->
answer latency per request (telemetry record time minus the request's send time, both wall-clock ms).
Scores joined with the clicks, exit layers and retrieval times come from the analytics reader
(:mod:`worker.analytics`) on the same topics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.codec import decode, encode
from schemas.messages import Click, ExitTelemetry, ImpressionRequest
from worker.settings import Settings


@dataclass
class PrequentialRun:
    requests: int
    answered: int = 0
    duplicates: int = 0
    first_sent_ms: float = 0.0
    last_answer_ms: float = 0.0
    latency_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        span_s = (self.last_answer_ms - self.first_sent_ms) / 1000.0
        return self.answered / span_s if span_s > 0 else float("nan")


async def answers_from_now(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of every ``exit-telemetry`` partition (no group), positioned at the current end."""
    consumer = AIOKafkaConsumer(settings.topic("exit-telemetry"), bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="latest")
    await consumer.start()
    for _ in range(200):
        if consumer.assignment():
            break
        await asyncio.sleep(0.05)
    for tp in consumer.assignment():
        await consumer.position(tp)  # resolve the end offsets now, before anything is published
    return consumer


async def run_prequential(settings: Settings, requests: list[ImpressionRequest], clicks: dict[str, list[Click]],
                          rate: float | None = None, timeout_s: float = 600.0,
                          on_answer: Callable[[PrequentialRun], None] | None = None) -> PrequentialRun:
    """Publish ``requests`` (paced to ``rate``), and ``clicks[request_id]`` once that request is answered."""
    run = PrequentialRun(len(requests))
    consumer = await answers_from_now(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    sent_ms: dict[str, float] = {}
    answered: set[str] = set()
    deliveries = []

    async def send_requests() -> None:
        start = time.perf_counter()
        for k, request in enumerate(requests):
            if rate:
                ahead = start + k / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            sent_ms[request.request_id] = time.time() * 1000.0
            deliveries.append(await producer.send(settings.topic("impressions"), encode(request),
                                                  key=request.user_id.encode()))

    try:
        run.first_sent_ms = time.time() * 1000.0
        sender = asyncio.create_task(send_requests())
        deadline = time.monotonic() + timeout_s
        while len(answered) < len(requests) and time.monotonic() < deadline:
            if sender.done() and sender.exception():
                raise sender.exception()
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    request_id = decode(ExitTelemetry, record.value).request_id
                    if request_id in answered or request_id not in sent_ms:
                        run.duplicates += request_id in answered
                        continue
                    answered.add(request_id)
                    run.latency_ms.append(max(0.0, record.timestamp - sent_ms[request_id]))
                    run.last_answer_ms = float(record.timestamp)
                    for click in clicks.get(request_id, ()):
                        deliveries.append(await producer.send(settings.topic("clicks"), encode(click),
                                                              key=click.user_id.encode()))
                    run.answered = len(answered)
                    if on_answer:
                        on_answer(run)
        await sender
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
        await consumer.stop()
    return run


def clicks_by_request(requests: list[ImpressionRequest], clicks: list[Click]) -> dict[str, list[Click]]:
    """Each request's clicks: the request built from rows ``k..k+n-1`` owns the clicks of those rows (requests
    and clicks come from the same rows, in order, via :func:`~worker.replay.impressions_of` / ``clicks_of``)."""
    out, position = {}, 0
    for request in requests:
        out[request.request_id] = clicks[position:position + len(request.item_ids)]
        position += len(request.item_ids)
    return out
