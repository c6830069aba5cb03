"""Helpers the integration tests share: read a topic to the end, wait for a condition, settings as env vars."""

from __future__ import annotations

import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer

from infra.runtime.settings import Settings


async def wait_for(condition, timeout_s: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Records of ``topic`` from the beginning until ``expected`` arrived (or the timeout), plus a second more:
    anything beyond ``expected`` shows up too."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        await asyncio.sleep(1.0)
        for records in (await consumer.getmany(timeout_ms=500)).values():
            out.extend(records)
    finally:
        await consumer.stop()
    return out


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that must see ``settings`` (plus ``extra`` overrides)."""
    return {**os.environ, **settings.model_copy(update=extra).environment()}
