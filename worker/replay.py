"""Publish a dataset's interactions to ``clicks`` in time order, at a chosen rate, with a progress bar.

Each row becomes a :class:`~schemas.messages.Click` keyed by user id with a deterministic event id
``<dataset>-<row>`` (row = position in the time-ordered table), so a replay repeated by mistake produces
duplicates that the updater recognises.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from graph_updater.datasets import Interactions
from schemas.codec import encode
from schemas.messages import Click


def clicks_of(data: Interactions, first_row: int = 0) -> list[Click]:
    """The click events of ``data``; ``first_row`` offsets the row numbers used in event ids."""
    return [Click(event_id=f"{data.name}-{first_row + k}", user_id=u, item_id=i, label=int(y), ts=int(t))
            for k, (u, i, y, t) in enumerate(zip(data.users, data.items, data.labels, data.ts, strict=True))]


async def publish(bootstrap: str, topic: str, clicks: list[Click], rate_per_s: float | None = None,
                  progress: bool = True, producer: AIOKafkaProducer | None = None) -> int:
    """Send ``clicks`` in order (paced to ``rate_per_s`` when given) and wait until all are acknowledged."""
    own = producer is None
    if own:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
    start = time.perf_counter()
    futures = []
    try:
        for k, click in enumerate(tqdm(clicks, desc=f"replay -> {topic}", unit="click", disable=not progress)):
            if rate_per_s:
                ahead = start + k / rate_per_s - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            futures.append(await producer.send(topic, encode(click), key=click.user_id.encode()))
        await asyncio.gather(*futures)
    finally:
        if own:
            await producer.stop()
    return len(futures)
