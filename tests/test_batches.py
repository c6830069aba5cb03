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


async def test_records_arriving_while_a_batch_is_in_flight_join_the_next_one_up_to_the_batch_size(settings):
    """With ``extend``: the first records after batch 1 start batch 2, later polls join it (not a batch of their
    own) until it holds the batch size; nothing more is taken while batch 1 is pending, and every batch still
    commits only after its outputs, in order."""
    settings = settings.model_copy(update={"topic_partitions": 1})
    await create_topics(settings)
    topic, group = settings.topic("impressions"), f"{settings.consumer_group}.extend"
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

    async def extend(records):
        started[-1] += [int(r.value) for r in records]
        return True

    async def committed() -> int:
        return (await committed_offsets(settings.kafka_bootstrap, group, topic)).get(0, 0)

    taken = lambda: sum(map(len, started))  # noqa: E731
    await produce(range(3))
    loop = asyncio.create_task(run_batches(settings, topic, group, 4, 50, process, "test", extend=extend))
    try:
        await wait_for(lambda: taken() == 3, 60, "the first batch")
        for value in range(3, 6):  # one poll each: the first starts batch 2, the next two join it
            await produce(range(value, value + 1))
            await wait_for(lambda value=value: taken() == value + 1, 60, f"record {value} taken")
        await produce(range(6, 9))
        await wait_for(lambda: taken() == 7, 60, "record 6 joining batch 2")
        await asyncio.sleep(1.0)
        assert started[0] == [0, 1, 2] and started[1] == [3, 4, 5, 6] and len(started) == 2
        assert taken() == 7 and await committed() == 0  # batch 2 is full and batch 1 pending: nothing more taken
        outputs[0].set_result(None)
        await wait_for(lambda: len(started) == 3, 60, "batch 3, once batch 1 is committed")
        assert await committed() == 3 and started[2][0] == 7
        outputs[1].set_result(None)
        for _ in range(100):
            for out in outputs:
                if not out.done():
                    out.set_result(None)
            if await committed() == 9:
                break
            await asyncio.sleep(0.1)
        assert await committed() == 9 and [v for batch in started for v in batch] == list(range(9))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await producer.stop()
