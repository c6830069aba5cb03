"""Integration: the click agent on the real Kafka broker with the real (embedded) Qdrant client."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from graph_reference import exact_reference, ingest_stream
from kafka_io import read_topic, settings_env, wait_for

from graph_updater import checkpoint
from graph_updater.agent import updater_group
from graph_updater.events import clicks_of
from graph_updater.graph import ITEM, USER
from graph_updater.online import item_key
from graph_updater.recovery import committed_offsets
from graph_updater.service import prepare
from schemas.codec import decode
from schemas.messages import DeadLetter
from worker.replay import publish

pytestmark = pytest.mark.integration


def reference(split, n_stream: int):
    """What the graph must hold after the first ``n_stream`` stream clicks, applied in one offline pass."""
    return ingest_stream(checkpoint.build_updater(split.train, dim=32, num_layers=3), split, n_stream)


def assert_same_state(updater, ref) -> None:
    assert sorted(updater.graph.keys) == sorted(ref.graph.keys)
    for key, v in ref.graph.index.items():
        mine = {updater.graph.keys[u] for u in updater.graph.adj[updater.graph.index[key]]}
        assert mine == {ref.graph.keys[u] for u in ref.graph.adj[v]}, key
    for user, h in ref.histories.items():
        assert set(updater.histories[user].liked) == set(h.liked), user
        assert set(updater.histories[user].disliked) == set(h.disliked), user


async def run_until_caught_up(service, n: int) -> None:
    """Run a restarted updater until replayed + consumed clicks reach ``n``; each click must count once."""
    await service.app.start()
    try:
        await wait_for(lambda: service.replayed + service.stats.clicks >= n, what="restarted updater caught up")
        await asyncio.sleep(1.0)  # a click applied twice would show up here
    finally:
        await service.app.stop()
    assert service.replayed + service.stats.clicks == n


BAD_MESSAGES = [
    (b"196", b"not json at all", "InvalidJson"),
    (b"196", b'{"event_id": "x", "user_id": "196"}', "SchemaViolation"),
    (b"196", b'{"event_id":"x2","user_id":"196","item_id":"1","label":7,"ts":900000000000}', "SchemaViolation"),
    (b"someone-else", b'{"event_id":"x3","user_id":"196","item_id":"1","label":1,"ts":900000000000}',
     "KeyMismatch"),
    (b"196", None, "EmptyMessage"),
]


async def test_replay_updates_vectors_and_dead_letters_bad_messages(settings, split, trained_checkpoint):
    n = 2000
    settings = settings.model_copy(update={"graph_checkpoint": trained_checkpoint, "updater_batch_size": 256})
    clicks = clicks_of(split.stream.take(slice(0, n)), first_row=len(split.train))
    train_users = set(split.train.users)
    new_user = next(c.user_id for c in clicks if c.user_id not in train_users and c.label == 1)
    topic = settings.topic("clicks")

    service = await prepare(settings)
    assert service.store.get(USER, new_user) is None
    await service.app.start()
    try:
        await publish(settings.kafka_bootstrap, topic, clicks[: n // 2], progress=False)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        for key, value, _ in BAD_MESSAGES:
            await producer.send_and_wait(topic, value, key=key)
        await producer.stop()
        await publish(settings.kafka_bootstrap, topic, clicks[n // 2:], progress=False)
        await wait_for(lambda: service.stats.clicks + service.stats.dead_letters >= n + len(BAD_MESSAGES),
                       what="all clicks processed")
    finally:
        await service.app.stop()

    assert service.stats.clicks == n and service.stats.dead_letters == len(BAD_MESSAGES)
    ref = reference(split, n)
    assert_same_state(service.updater, ref)

    # the brand-new user's vector is readable, with the liked items of the stream in its payload
    found = service.store.get(USER, new_user)
    assert found is not None
    vector, payload = found
    assert np.linalg.norm(vector) > 0
    assert set(payload["liked_keys"]) == {item_key(i) for i in ref.histories[new_user].liked}
    assert payload["n_liked"] == len(ref.histories[new_user].liked)
    node = service.updater.graph.node(USER, new_user)
    expected = service.updater.graph.final(np.array([node]))[0]
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-4)  # cosine: stored unit

    # one point per node that reacted or was reacted to (unlinked ones too): nothing lost, nothing extra
    assert service.store.count(USER) == sum(k.startswith("u:") for k in ref.graph.keys)
    assert service.store.count(ITEM) == sum(k.startswith("i:") for k in ref.graph.keys)

    letters = await read_topic(settings.kafka_bootstrap, settings.topic("clicks.dlq"), len(BAD_MESSAGES))
    assert len(letters) == len(BAD_MESSAGES)
    decoded = sorted((decode(DeadLetter, r.value) for r in letters), key=lambda d: d.offset)
    for (key, value, error_class), letter in zip(BAD_MESSAGES, decoded, strict=True):
        assert letter.error_class == error_class
        assert base64.b64decode(letter.value_b64) == (value or b"")
        assert base64.b64decode(letter.key_b64) == key
        assert letter.topic == topic

    committed = await committed_offsets(settings.kafka_bootstrap, updater_group(settings), topic)
    assert sum(committed.values()) == n + len(BAD_MESSAGES)


async def test_restart_mid_stream_loses_nothing(settings, split, trained_checkpoint):
    n = 4000
    # batches stay at 50 (no growth behind the backlog published up front) so that the stop lands mid-stream
    settings = settings.model_copy(update={"graph_checkpoint": trained_checkpoint, "updater_batch_size": 50,
                                           "updater_batch_max": 50, "updater_batch_wait_ms": 20,
                                           "refine_every_clicks": 1000})
    clicks = clicks_of(split.stream.take(slice(0, n)), first_row=len(split.train))
    await publish(settings.kafka_bootstrap, settings.topic("clicks"), clicks, progress=False)

    first = await prepare(settings)
    await first.app.start()
    await wait_for(lambda: first.stats.clicks >= 1000, what="first updater mid-stream")
    await first.app.stop()
    assert first.stats.clicks < n, "the first updater must stop mid-stream"

    second = await prepare(settings)  # fresh process state: checkpoint + committed clicks + empty store
    assert 0 < second.replayed <= first.stats.clicks
    await run_until_caught_up(second, n)
    ref = reference(split, n)
    assert_same_state(second.updater, ref)
    total_users = sum(1 for k in second.updater.graph.keys if k.startswith("u:"))
    assert second.store.count(USER) == total_users  # every user who reacted has a point (unlinked ones too)

    # the restart guarantee (graph_updater.recovery): state and store equal the one-pass reference, vectors
    # its exact propagation, whatever the batch boundaries and the refinements the live process ran
    third = await prepare(settings)
    assert third.replayed == n and second.stats.refinements >= 1, "the live run crossed a refinement"
    ref = exact_reference(trained_checkpoint, split, n)  # the checkpoint's trained base embeddings, one pass
    expected = {(r.kind, r.external_id): r for r in ref.all_records()}
    for (kind, external_id), record in expected.items():
        vector, payload = third.store.get(kind, external_id)
        assert payload == record.payload, (kind, external_id)
        unit = np.asarray(record.vector) / np.linalg.norm(record.vector)  # cosine collections store unit vectors
        np.testing.assert_allclose(vector, unit, rtol=1e-4, atol=1e-5)
    live = second.updater.graph.final()
    order = [second.updater.graph.index[k] for k in third.updater.graph.keys]
    linked = np.array([bool(third.updater.graph.adj[v]) for v in range(len(third.updater.graph))])
    cos = np.sum(live[order] * third.updater.graph.final(), axis=1) / (
        np.linalg.norm(live[order], axis=1) * np.linalg.norm(third.updater.graph.final(), axis=1) + 1e-12)
    print(f"live vs restarted vectors: mean cosine {cos[linked].mean():.4f}, 1st percentile "
          f"{np.percentile(cos[linked], 1):.4f} after {second.stats.refinements} refinements")
    assert cos[linked].mean() >= 0.95  # the drift a restart drops (README, "Delivery guarantees")
    third.store.close()


async def test_killed_updater_process_loses_nothing(settings, split, trained_checkpoint):
    """`exitrec graph-updater` in its own process, SIGKILLed mid-stream (no graceful commit), then replaced."""
    import os
    import signal
    import subprocess
    import sys

    n = 4000
    # batches stay at 50 (no growth behind the backlog published up front) so that the kill lands mid-stream
    settings = settings.model_copy(update={"graph_checkpoint": trained_checkpoint, "updater_batch_size": 50,
                                           "updater_batch_max": 50, "updater_batch_wait_ms": 20,
                                           "session_timeout_s": 6.0})
    clicks = clicks_of(split.stream.take(slice(0, n)), first_row=len(split.train))
    topic = settings.topic("clicks")
    await publish(settings.kafka_bootstrap, topic, clicks, progress=False)
    env = settings_env(settings)
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "graph-updater"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    committed: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 180
        while sum(committed.values()) < 500:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the updater process committed nothing"
            await asyncio.sleep(0.3)
            committed = await committed_offsets(settings.kafka_bootstrap, updater_group(settings), topic)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sum(committed.values()) < n, "the process must be killed mid-stream"

    second = await prepare(settings)
    assert second.replayed >= sum(committed.values())
    await run_until_caught_up(second, n)
    assert_same_state(second.updater, reference(split, n))
