"""Testcontainers: Kafka from the locally built image, and the click-path and scorer integration tests run on it.

The images come from ``infra/images`` (no registry). A Qdrant server needs the ``qdrant/qdrant`` image, which only
a machine with a reachable registry (or a pre-loaded image) has: that test skips elsewhere with the engine's own
error. Without a Docker engine the whole module skips with the reason.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest
import test_graph_updater_kafka as click_path
import test_scorer_kafka as scorer_path
from conftest import docker_problem

from graph_updater.graph import USER
from graph_updater.online import UserHistory, VectorRecord, item_key
from graph_updater.store import QdrantStore

QDRANT_IMAGE = "qdrant/qdrant:v1.20.0"  # the server release matching the pinned qdrant-client

pytestmark = [pytest.mark.docker, pytest.mark.skipif(docker_problem() is not None, reason=str(docker_problem()))]


@functools.cache
def qdrant_image_problem() -> str | None:
    """None when the Qdrant image is in the engine or can be pulled, else the engine's reason."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(QDRANT_IMAGE)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(QDRANT_IMAGE)
        except docker.errors.APIError as exc:
            return (f"{QDRANT_IMAGE} is not in the engine and cannot be pulled ({exc.explanation}); no Qdrant "
                    f"server binary or image is reachable from this machine")
    return None


async def test_kafka_container_carries_clicks(container_kafka_bootstrap):
    from aiokafka import AIOKafkaConsumer

    from schemas.codec import decode
    from schemas.messages import Click
    from worker.replay import publish

    click = Click(event_id="e1", user_id="u1", item_id="i1", label=1, ts=1_700_000_000_000)
    assert await publish(container_kafka_bootstrap, "clicks", [click], progress=False) == 1
    consumer = AIOKafkaConsumer("clicks", bootstrap_servers=container_kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)  # not the whole test timeout
    finally:
        await consumer.stop()
    assert decode(Click, record.value) == click and record.key == b"u1"


async def test_click_path_on_the_kafka_container(container_settings, split, trained_checkpoint):
    """The click-path integration test, unchanged, on the containerised broker."""
    await click_path.test_replay_updates_vectors_and_dead_letters_bad_messages(container_settings, split,
                                                                                trained_checkpoint)


async def test_scorer_on_the_kafka_container(container_settings, split, trained_checkpoint, tiny_scorer_checkpoint):
    """The scorer integration test, unchanged, on the containerised broker."""
    await scorer_path.test_every_request_is_scored_and_bad_ones_dead_lettered(container_settings, split,
                                                                               trained_checkpoint,
                                                                               tiny_scorer_checkpoint)


def test_qdrant_server_store_round_trip():
    problem = qdrant_image_problem()
    if problem:
        pytest.skip(problem)
    from testcontainers.community.qdrant import QdrantContainer

    with QdrantContainer(QDRANT_IMAGE) as qdrant:
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
