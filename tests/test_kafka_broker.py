"""The local broker: storage formatting inputs, and restarts on its own log."""

import base64

import pytest

from infra.kafka import broker


def test_cluster_ids_parse_as_kafka_uuids_and_never_look_like_an_option():
    ids = [broker._cluster_id() for _ in range(5000)]  # ~78 would start with "-" if drawn once
    assert not any(i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


async def _produce_and_read(bootstrap: str, topic: str, send: list[bytes]) -> list[bytes]:
    """Send ``send`` (may be empty) to ``topic``, then read the whole topic from the start."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    if send:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for value in send:
                await producer.send_and_wait(topic, value, partition=0)
        finally:
            await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000)
        return [m.value for records in batch.values() for m in records]
    finally:
        await consumer.stop()


def test_a_restarted_broker_keeps_its_log_cluster_id_and_port_and_fresh_wipes_it(tmp_path):
    """Before: every start reformatted the storage, deleting the clicks log the updater rebuilds from."""
    import asyncio
    import os
    import signal

    run_dir = tmp_path / "kafka"
    first = broker.start(run_dir, partitions=1)
    try:
        assert not first.restarted
        cluster = broker.cluster_id(run_dir)
        assert asyncio.run(_produce_and_read(first.bootstrap, "kept", [b"a", b"b"])) == [b"a", b"b"]
        os.killpg(first.pid, signal.SIGKILL)  # not even a clean shutdown
        os.waitpid(first.pid, 0)
        again = broker.start(run_dir)
        assert again.restarted and again.port == first.port and broker.cluster_id(run_dir) == cluster
        assert asyncio.run(_produce_and_read(again.bootstrap, "kept", [])) == [b"a", b"b"]
        with pytest.raises(broker.BrokerError, match=f"keeps its log on port {first.port}"):
            broker.stop(run_dir)
            broker.start(run_dir, port=broker.free_port())
        wiped = broker.start(run_dir, fresh=True)
        assert not wiped.restarted and broker.cluster_id(run_dir) != cluster
        assert asyncio.run(_produce_and_read(wiped.bootstrap, "kept", [])) == []
    finally:
        broker.stop(run_dir)
