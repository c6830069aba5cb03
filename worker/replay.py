"""Publish contract messages (:mod:`graph_updater.events`: a dataset's clicks, impression requests, items) to a
topic in order, keyed by their partitioning key."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from graph_updater.events import key_of
from schemas.codec import encode
from schemas.messages import Click, ImpressionRequest, Item


async def publish(bootstrap: str, topic: str, clicks: list[Click] | list[ImpressionRequest] | list[Item],
                  rate_per_s: float | None = None, progress: bool = True,
                  producer: AIOKafkaProducer | None = None) -> int:
    """Send ``clicks`` (or requests, or items) keyed by user id (item id), in order (paced to ``rate_per_s`` when
    given), and wait until all are acknowledged."""
    own = producer is None
    if own:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
    start = time.perf_counter()
    futures = []
    try:
        for k, click in enumerate(tqdm(clicks, desc=f"replay -> {topic}", unit="msg", disable=not progress)):
            if rate_per_s:
                ahead = start + k / rate_per_s - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            futures.append(await producer.send(topic, encode(click), key=key_of(click)))
        await asyncio.gather(*futures)
    finally:
        if own:
            await producer.stop()
    return len(futures)
