"""run_batches on the real broker: a pipelined batch is committed only once its outputs exist, in order, while
the next batch is already being processed."""

import asyncio

from aiokafka import AIOKafkaProducer

from graph_updater.recovery import committed_offsets
from infra.runtime.app import create_topics
from infra.runtime.batches import run_batches
from tests.kafka_io import wait_for


async def test_a_pipelined_batch_commits_after_its_outputs_and_in_order(settings):
    settings = settings.model_copy(update={"topic_partitions": 1})
    await create_topics(settings)
    topic, group = settings.topic("impressions"), f"{settings.consumer_group}.batches"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()

    async def produce(values: range) -> None:
        for v in values:
            await producer.send_and_wait(topic, str(v).encode())

    started: list[list[int]] = []
    outputs: list[asyncio.Future] = []

    async def process(records):
        started.append([int(r.value) for r in records])
        outputs.append(asyncio.get_running_loop().create_future())
        return outputs[-1]

    async def committed() -> int:
        return (await committed_offsets(settings.kafka_bootstrap, group, topic)).get(0, 0)

    await produce(range(3))
    loop = asyncio.create_task(run_batches(settings, topic, group, 3, 50, process, "test"))
    try:
        await wait_for(lambda: len(started) == 1, 60, "the first batch")
        await produce(range(3, 6))
        await wait_for(lambda: len(started) == 2, 60, "a second batch, started while the first is in flight")
        seen = [v for batch in started for v in batch]
        assert seen == list(range(len(seen)))
        await asyncio.sleep(1.0)
        assert await committed() == 0  # the first batch's outputs do not exist yet: nothing committed
        outputs[1].set_result(None)  # the second finishes first: still nothing, commits go in batch order
        await asyncio.sleep(1.0)
        assert await committed() == 0 and len(started) == 2  # and no third batch while the first is pending
        outputs[0].set_result(None)
        for _ in range(100):
            for out in outputs:  # later batches (if the broker split the records differently) finish at once
                if not out.done():
                    out.set_result(None)
            if await committed() == 6:
                break
            await asyncio.sleep(0.1)
        assert await committed() == 6 and [v for batch in started for v in batch] == list(range(6))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await producer.stop()


async def test_the_partitioned_updaters_topics_exist_only_where_they_run(settings):
    from aiokafka.admin import AIOKafkaAdminClient

    from infra.runtime.app import CONTRACT_TOPICS, PARTITIONED_TOPICS

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            return {t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)}
        finally:
            await admin.close()

    async def listed(names: tuple[str, ...]) -> set[str]:  # a created topic reaches the metadata shortly after
        expected = {settings.topic(name) for name in names}
        for _ in range(100):
            if (now := await topics()) == expected:
                break
            await asyncio.sleep(0.1)
        return now

    contract = {settings.topic(name) for name in CONTRACT_TOPICS}
    assert sorted(await create_topics(settings)) == sorted(contract)
    assert await listed(CONTRACT_TOPICS) == contract
    assert await create_topics(settings, partitioned=True) == [settings.topic(name) for name in PARTITIONED_TOPICS]
    assert await listed(CONTRACT_TOPICS + PARTITIONED_TOPICS) == contract | {
        settings.topic(name) for name in PARTITIONED_TOPICS}


async def test_a_backlog_is_read_in_growing_batches_and_a_caught_up_loop_in_small_ones(settings):
    """Behind a backlog the cap doubles from ``batch_size`` while polls come back full, up to the maximum; once
    the loop has caught up, a short poll sets it back. Every record is processed once, in order."""
    settings = settings.model_copy(update={"topic_partitions": 1})
    await create_topics(settings)
    topic, group = settings.topic("impressions"), f"{settings.consumer_group}.backlog"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    sizes: list[int] = []
    seen: list[int] = []

    async def process(records):
        sizes.append(len(records))
        seen.extend(int(r.value) for r in records)

    for v in range(200):
        await producer.send(topic, str(v).encode())  # queued in the producer's batches, delivered by flush
    await producer.flush()
    loop = asyncio.create_task(run_batches(settings, topic, group, 4, 50, process, "test", max_batch_size=32))
    try:
        await wait_for(lambda: len(seen) == 200, 60, "the backlog")
        assert max(sizes) == 32 and sizes[:4] == [4, 8, 16, 32]  # full polls double the cap up to the maximum
        backlog_batches = len(sizes)
        for v in range(200, 210):  # the loop has caught up: a poll that comes back short resets the cap
            await producer.send_and_wait(topic, str(v).encode())
        await wait_for(lambda: len(seen) == 210, 60, "the records sent one by one")
        assert seen == list(range(210)) and max(sizes[backlog_batches:]) <= 4
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await producer.stop()
