"""Integration: two partitioned graph updaters on the real broker split the clicks; one is SIGKILLed mid-stream."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from graph_reference import exact_reference
from kafka_io import settings_env, wait_for

from graph_updater import checkpoint
from graph_updater.events import clicks_of
from graph_updater.graph import USER
from graph_updater.online import merged_payload
from graph_updater.partitioned import ShardLoop, shard_group
from graph_updater.recovery import committed_offsets
from graph_updater.store import EdgeStore
from infra.runtime.app import CLICKS, CLICKS_BY_ITEM
from infra.runtime.topic_reads import committed_records, read_up_to
from schemas.codec import decode
from schemas.messages import DeadLetter
from worker.replay import publish

pytestmark = pytest.mark.integration
BAD_CLICKS = [(b"196", b"not json at all"),
              (b"someone-else", b'{"event_id":"x3","user_id":"196","item_id":"1","label":1,"ts":900000000000}')]


def ready(port: int) -> int | None:
    """The status of a partitioned updater's ``/readyz`` (None while nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as page:
            return page.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def shard(settings, replica: str, trained_checkpoint) -> tuple[ShardLoop, asyncio.Future]:
    loop = ShardLoop(settings.model_copy(update={"replica_id": replica}), EdgeStore(),
                     lambda: checkpoint.load_arrays(trained_checkpoint), private=True)
    return loop, asyncio.ensure_future(loop.run())


async def test_two_partitioned_updaters_split_the_clicks_and_survive_a_kill(settings, split, trained_checkpoint,
                                                                           tmp_path):
    n = 4000
    settings = settings.model_copy(update={"graph_checkpoint": trained_checkpoint, "updater_batch_size": 50,
                                           "updater_batch_wait_ms": 20, "session_timeout_s": 6.0})
    clicks = clicks_of(split.stream.take(slice(0, n)), first_row=len(split.train))
    group, clicks_topic = shard_group(settings), settings.topic(CLICKS)

    async def stream() -> None:
        """The clicks at 1,000/s (the kill lands mid-stream however slow the machine), two invalid ones halfway."""
        await publish(settings.kafka_bootstrap, clicks_topic, clicks[: n // 2], 1000.0, progress=False)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        for key, value in BAD_CLICKS:
            await producer.send_and_wait(clicks_topic, value, key=key)
        await producer.stop()
        await publish(settings.kafka_bootstrap, clicks_topic, clicks[n // 2:], 1000.0, progress=False)

    # updater "a" in its own process (the CLI), updater "b" in this one; they split the partitions
    stderr = open(tmp_path / "a.log", "wb")  # noqa: SIM115 (closed in finally)
    with socket.socket() as probe:  # a free port for a's /metrics, /readyz
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "graph-updater", "--partitioned"],
                            env=settings_env(settings, replica_id="a", metrics_port=port), stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True)
    b, b_task = shard(settings, "b", trained_checkpoint)
    a2 = a2_task = publishing = None
    try:
        deadline = time.monotonic() + 180
        while b.shard is None or b.rebuild_due or len(b.shard.user_partitions) == settings.topic_partitions:
            assert proc.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert not b_task.done(), b_task.exception()
            assert time.monotonic() < deadline, "the two updaters did not split the partitions"
            await asyncio.sleep(0.3)
        while ready(port) != 200:  # a's endpoint says when its share is rebuilt
            assert proc.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "a never reported ready"
            await asyncio.sleep(0.3)
        publishing = asyncio.ensure_future(stream())
        committed: dict[int, int] = {}
        while sum(committed.values()) < 1000:
            assert proc.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert not b_task.done(), b_task.exception()
            assert time.monotonic() < deadline + 60, "the two updaters did not commit clicks"
            await asyncio.sleep(0.2)
            committed = await committed_offsets(settings.kafka_bootstrap, group, clicks_topic)
        assert 0 < len(b.shard.user_partitions) < settings.topic_partitions, "b holds a share, not all"
        assert any(o for p, o in committed.items() if p not in b.shard.user_partitions), "a committed clicks too"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            assert 'exitrec_consumer_lag{loop="shard"' in page.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stream, maybe mid-transaction
        proc.wait()
        assert sum(committed.values()) < n + len(BAD_CLICKS), "the process must be killed mid-stream"

        # its replacement, same replica id: it fences the dead process's open transaction
        a2, a2_task = shard(settings, "a", trained_checkpoint)

        progress: dict = {}

        async def caught_up() -> bool:
            done = await committed_offsets(settings.kafka_bootstrap, group, clicks_topic)
            progress.update(clicks_committed=done)
            if sum(done.values()) < n + len(BAD_CLICKS):
                return False
            count, after = await committed_records(settings.kafka_bootstrap, settings.topic(CLICKS_BY_ITEM))
            by_item = await committed_offsets(settings.kafka_bootstrap, group, settings.topic(CLICKS_BY_ITEM))
            progress.update(forwards=count, by_item_after=after, by_item_committed=by_item)
            return count == n and all(by_item.get(p, 0) >= end for p, end in after.items())

        await publishing
        deadline = time.monotonic() + 180
        while not await caught_up():
            assert not b_task.done() and not a2_task.done(), (b_task.exception() if b_task.done()
                                                                  else a2_task.exception())
            assert time.monotonic() < deadline, (
                f"the updaters did not catch up: {progress}; " + "; ".join(
                    f"{name}: clicks {s.stats.clicks}, rebuilds {s.rebuilds}, due {s.rebuild_due}, epoch {s.epoch}, "
                    f"partitions {s.shard and sorted(s.shard.user_partitions)}" for name, s in (("a2", a2), ("b", b))))
            await asyncio.sleep(0.5)
        await wait_for(lambda: not (a2.rebuild_due or b.rebuild_due), what="assignments settled")
        await asyncio.sleep(1.0)
        count, _ = await committed_records(settings.kafka_bootstrap, settings.topic(CLICKS_BY_ITEM))
        assert count == n, "every click forwarded to its item's owner exactly once, across the kill"

        letters = [decode(DeadLetter, r.value) async for records in read_up_to(  # written in transactions too
            settings.kafka_bootstrap, settings.topic("clicks.dlq"), None, isolation_level="read_committed")
            for r in records]
        assert sorted((base64.b64decode(d.value_b64), d.error_class) for d in letters) == \
            sorted((value, kind) for (_, value), kind in zip(BAD_CLICKS, ("InvalidJson", "KeyMismatch"), strict=True))
        exposition = b.metrics.exposition().decode()
        assert f'exitrec_batches_total{{loop="shard"}} {float(b.stats.batches)}' in exposition
        lags = [line for line in exposition.splitlines() if line.startswith('exitrec_consumer_lag{loop="shard"')]
        assert len(lags) == len(b.shard.user_partitions) + len(b.shard.item_partitions), "a lag series per partition"
        shards = [a2.shard, b.shard]
        assert set(a2.shard.user_partitions).isdisjoint(b.shard.user_partitions)
        assert set(a2.shard.user_partitions) | set(b.shard.user_partitions) == set(range(settings.topic_partitions))

        # the union of what the two wrote equals one process's one pass over the same clicks
        ref = exact_reference(trained_checkpoint, split, n)
        cos = []
        for record in ref.all_records():
            (loop,) = [s for s in (a2, b) if s.shard.owns(record.kind, record.external_id)]
            other = b if loop is a2 else a2
            assert other.store.get(record.kind, record.external_id) is None, "a point lives with its owner only"
            vector, payload = loop.store.get(record.kind, record.external_id)
            if record.kind == USER:
                payload, expected = merged_payload(payload), merged_payload(record.payload)
            else:
                expected = record.payload
            assert payload == expected, (record.kind, record.external_id)
            if expected["linked"]:
                cos.append(float(np.dot(vector, record.vector) / np.linalg.norm(record.vector)))
        owned = sum(len(s.histories) + len(s.item_reactions) for s in shards)
        assert owned == len(ref.graph) == sum(s.store.count("u") + s.store.count("i") for s in (a2, b))
        cos = np.asarray(cos)
        print(f"partitioned vs exact propagation: mean cosine {cos.mean():.4f}, 1st percentile "
              f"{np.percentile(cos, 1):.4f}; rebuilds a2 {a2.rebuilds}, b {b.rebuilds}")
        assert cos.mean() >= 0.95  # the radius-0 drift a one-process live run has too (its restart test)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stderr.close()
        if publishing is not None:
            publishing.cancel()
        for task in (b_task, a2_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for loop in (b, a2):
            if loop is not None:
                loop.store.close()


async def test_unequal_partition_counts_fail_in_one_line(settings, tmp_path):
    """clicks-by-item with another partition count than clicks: the CLI exits with one line naming the fix."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic(CLICKS_BY_ITEM), 2, 1)])
    finally:
        await admin.close()
    done = subprocess.run([sys.executable, "-m", "worker.cli", "graph-updater", "--partitioned"],
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "recreate" in lines[-1] and "Traceback" not in done.stderr
