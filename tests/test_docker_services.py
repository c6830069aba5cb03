"""Where a Docker engine answers (users' machines), testcontainers provide Kafka and a Qdrant server.

Here (no engine) these tests skip with the reason; the Maven-started broker carries the integration tests.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

from graph_updater.graph import USER
from graph_updater.online import UserHistory, VectorRecord, item_key
from graph_updater.store import QdrantStore


@functools.cache
def docker_engine() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no socket, permission, daemon down: all mean "no engine"
        return f"no Docker engine answers ({type(exc).__name__}); testcontainers need one"
    return None


pytestmark = [pytest.mark.docker, pytest.mark.skipif(docker_engine() is not None, reason=str(docker_engine()))]


def test_qdrant_server_store_round_trip():
    from testcontainers.qdrant import QdrantContainer

    with QdrantContainer() as qdrant:
        store = QdrantStore.open(url=f"http://{qdrant.rest_host_address}")
        store.ensure_collections(4)
        liker = UserHistory()
        liker.record("e1", "x", 1, 900_000_000_000)
        store.upsert([VectorRecord(USER, "a", [1.0, 0, 0, 0], liker.payload("a", 20)),
                      VectorRecord(USER, "b", [0.9, 0.1, 0, 0], UserHistory().payload("b", 20))])
        vec, payload = store.get(USER, "a")
        np.testing.assert_allclose(vec, [1, 0, 0, 0], atol=1e-6)
        assert payload["liked_keys"] == [item_key("x")]
        assert [n.user_id for n in store.similar_users([1, 0, 0, 0], k=5, interacted_with="x")] == ["a"]


async def test_kafka_container_carries_clicks():
    from aiokafka import AIOKafkaConsumer
    from testcontainers.kafka import KafkaContainer

    from schemas.codec import decode
    from schemas.messages import Click
    from worker.replay import publish

    click = Click(event_id="e1", user_id="u1", item_id="i1", label=1, ts=1_700_000_000_000)
    with KafkaContainer() as kafka:
        bootstrap = kafka.get_bootstrap_server()
        assert await publish(bootstrap, "clicks", [click], progress=False) == 1
        consumer = AIOKafkaConsumer("clicks", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=30)  # not the whole test timeout
        finally:
            await consumer.stop()
        assert decode(Click, record.value) == click and record.key == b"u1"
