"""Drive a prequential replay through running workers: each impression is answered before its own click exists.

Time-ordered rows of a dataset become impression requests (:func:`~worker.replay.impressions_of`); a request's
clicks (its rows' labels) are published only once its ``exit-telemetry`` answer has been read, so the scorer
never sees a row's own outcome. Two ways to send the requests:

- :func:`run_prequential` (open loop): requests paced to ``rate``/s (``None`` = all at once, which measures
  capacity). Fast, but a request may be scored before the clicks of earlier rows have been folded in: with
  bursty users (MovieLens users rate dozens of films in a minute) most of a burst is scored stale.
- :func:`run_waves` (strict): requests go in waves of rows with distinct users, in time order; after a wave is
  answered its clicks are published and the next wave waits until the graph updater has committed them. Every
  request is then scored with the state built from all earlier clicks — the protocol of ARCHITECTURE.md, the
  one AUC is measured with.

Measured here, per answered request: impression -> answer latency (telemetry record time minus the request's
send time, both wall-clock ms), and from its telemetry the exit layers, retrieval / queue / inference times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from graph_updater.recovery import committed_offsets
from infra.runtime.settings import Settings
from schemas.codec import decode, encode
from schemas.messages import Click, ExitTelemetry, ImpressionRequest


@dataclass
class PrequentialRun:
    requests: int
    answered: int = 0
    duplicates: int = 0
    first_sent_ms: float = 0.0
    last_answer_ms: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    exit_layers: list[int] = field(default_factory=list)  # per candidate
    retrieval_ms: list[float] = field(default_factory=list)  # per request, from here on as telemetry reports them
    queue_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        span_s = (self.last_answer_ms - self.first_sent_ms) / 1000.0
        return self.answered / span_s if span_s > 0 else float("nan")


class Replayer:
    """One producer and one group-less reader of ``exit-telemetry`` (positioned at its end on entry)."""

    def __init__(self, settings: Settings, run: PrequentialRun, clicks: dict[str, list[Click]],
                 on_answer: Callable[[PrequentialRun], None] | None = None) -> None:
        self.settings, self.run, self.clicks, self.on_answer = settings, run, clicks, on_answer
        self.sent_ms: dict[str, float] = {}
        self.answered: set[str] = set()
        self.deliveries: list = []

    async def __aenter__(self) -> Replayer:
        s = self.settings
        self.consumer = AIOKafkaConsumer(s.topic("exit-telemetry"), bootstrap_servers=s.kafka_bootstrap,
                                         group_id=None, auto_offset_reset="latest")
        await self.consumer.start()
        for _ in range(200):
            if self.consumer.assignment():
                break
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)  # resolve the end offsets now, before anything is published
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=2)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await asyncio.gather(*self.deliveries)
        finally:
            await self.producer.stop()
            await self.consumer.stop()

    async def send(self, request: ImpressionRequest) -> None:
        now = time.time() * 1000.0
        self.run.first_sent_ms = self.run.first_sent_ms or now
        self.sent_ms[request.request_id] = now
        self.deliveries.append(await self.producer.send(self.settings.topic("impressions"), encode(request),
                                                        key=request.user_id.encode()))

    async def read(self, timeout_ms: int = 100) -> list[Click]:
        """Take the answers available now; publish the clicks of newly answered requests and return them."""
        published = []
        for records in (await self.consumer.getmany(timeout_ms=timeout_ms)).values():
            for record in records:
                telemetry = decode(ExitTelemetry, record.value)
                request_id = telemetry.request_id
                if request_id in self.answered or request_id not in self.sent_ms:
                    self.run.duplicates += request_id in self.answered
                    continue
                self.answered.add(request_id)
                run = self.run
                run.latency_ms.append(max(0.0, record.timestamp - self.sent_ms[request_id]))
                run.last_answer_ms = float(record.timestamp)
                run.exit_layers.extend(c.exit_layer for c in telemetry.candidates)
                run.retrieval_ms.append(telemetry.retrieval_ms)
                run.queue_ms.append(telemetry.queue_ms)
                run.inference_ms.append(telemetry.inference_ms)
                for click in self.clicks.get(request_id, ()):
                    self.deliveries.append(await self.producer.send(self.settings.topic("clicks"), encode(click),
                                                                    key=click.user_id.encode()))
                    published.append(click)
                run.answered = len(self.answered)
                if self.on_answer:
                    self.on_answer(run)
        return published


async def run_prequential(settings: Settings, requests: list[ImpressionRequest], clicks: dict[str, list[Click]],
                          rate: float | None = None, timeout_s: float = 600.0,
                          on_answer: Callable[[PrequentialRun], None] | None = None) -> PrequentialRun:
    """Open loop: publish ``requests`` (paced to ``rate``), and ``clicks[request_id]`` once it is answered."""
    run = PrequentialRun(len(requests))
    async with Replayer(settings, run, clicks, on_answer) as replayer:

        async def send_all() -> None:
            start = time.perf_counter()
            for k, request in enumerate(requests):
                if rate:
                    ahead = start + k / rate - time.perf_counter()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                await replayer.send(request)

        sender = asyncio.create_task(send_all())
        deadline = time.monotonic() + timeout_s
        while run.answered < len(requests) and time.monotonic() < deadline:
            if sender.done() and sender.exception():
                raise sender.exception()
            await replayer.read()
        await sender
    return run


def waves(requests: list[ImpressionRequest]) -> list[list[ImpressionRequest]]:
    """Consecutive runs of requests with distinct users (a user's next request opens a new wave)."""
    out: list[list[ImpressionRequest]] = [[]]
    users: set[str] = set()
    for request in requests:
        if request.user_id in users:
            out.append([])
            users = set()
        out[-1].append(request)
        users.add(request.user_id)
    return [w for w in out if w]


async def run_waves(settings: Settings, requests: list[ImpressionRequest], clicks: dict[str, list[Click]],
                    updater_group: str, clicks_before: int, timeout_s: float = 1800.0,
                    on_answer: Callable[[PrequentialRun], None] | None = None) -> PrequentialRun:
    """Strict prequential replay (module docstring). ``clicks_before``: clicks already on the topic, which the
    updater (consumer group ``updater_group``) has committed or will."""
    run = PrequentialRun(len(requests))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    published = clicks_before
    deadline = time.monotonic() + timeout_s
    try:
        async with Replayer(settings, run, clicks, on_answer) as replayer:
            for wave in waves(requests):
                wanted = run.answered + len(wave)
                for request in wave:
                    await replayer.send(request)
                while run.answered < wanted:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{run.answered} of {len(requests)} requests answered in {timeout_s}s")
                    published += len(await replayer.read(timeout_ms=20))
                await asyncio.gather(*replayer.deliveries)
                while sum((await committed_offsets(settings.kafka_bootstrap, updater_group, settings.topic("clicks"),
                                                   admin)).values()) < published:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the graph updater did not commit the published clicks")
                    await asyncio.sleep(0.01)
    finally:
        await admin.close()
    return run


def clicks_by_request(requests: list[ImpressionRequest], clicks: list[Click]) -> dict[str, list[Click]]:
    """Each request's clicks: the request built from rows ``k..k+n-1`` owns the clicks of those rows (requests
    and clicks come from the same rows, in order, via :func:`~worker.replay.impressions_of` / ``clicks_of``)."""
    out, position = {}, 0
    for request in requests:
        out[request.request_id] = clicks[position:position + len(request.item_ids)]
        position += len(request.item_ids)
    return out
