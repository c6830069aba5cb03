"""A tenant's own log as a training dataset: the ``clicks`` and ``items`` topics up to now (or a timestamp), written
as the CSV folder :func:`graph_updater.datasets.load_tenant` reads, so ``--from-topic`` training runs exactly the
``--csv`` path (time split, prequential samples, calibration).

Each topic is read with a group-less consumer from its beginning to the end offsets seen at the start (records
produced meanwhile are left for the next snapshot). Clicks that fail their contract are skipped and counted
(they were dead-lettered when the worker met them); ``until_ms`` keeps clicks with ``ts <= until_ms``. Items keep
the latest record per item; a tombstone removes it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.runtime.settings import Settings
from schemas.codec import InvalidMessage, decode_item, decode_keyed
from schemas.messages import Click, Item
from scorer.catalogue_agent import partition_ids


async def read_to_end(bootstrap: str, topic: str, handle: Callable[[bytes | None, bytes | None], None]) -> int:
    """Feed every record of ``topic`` up to its current end to ``handle(key, value)``; return how many."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    seen = 0
    try:
        partitions = [TopicPartition(topic, p) for p in await partition_ids(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=1000)).items():
                for record in records:
                    if record.offset < ends[tp]:
                        handle(record.key, record.value)
                        seen += 1
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return seen


async def snapshot(settings: Settings, folder: Path, until_ms: int | None = None) -> dict:
    """Write ``folder/clicks.csv`` and ``folder/items.csv`` from the topics; return counts."""
    folder.mkdir(parents=True, exist_ok=True)
    clicks: list[Click] = []
    items: dict[str, Item] = {}
    invalid = {"clicks": 0, "items": 0}

    def on_click(key: bytes | None, value: bytes | None) -> None:
        try:
            click = decode_keyed(Click, key, value)
        except InvalidMessage:
            invalid["clicks"] += 1
            return
        if until_ms is None or click.ts <= until_ms:
            clicks.append(click)

    def on_item(key: bytes | None, value: bytes | None) -> None:
        try:
            item = decode_item(key, value)
        except InvalidMessage:
            invalid["items"] += 1
            return
        if item is None:
            items.pop(key.decode(errors="replace"), None)
        else:
            items[item.item_id] = item

    await read_to_end(settings.kafka_bootstrap, settings.topic("clicks"), on_click)
    await read_to_end(settings.kafka_bootstrap, settings.topic("items"), on_item)
    with (folder / "clicks.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["user_id", "item_id", "label", "ts"])
        out.writerows((c.user_id, c.item_id, c.label, c.ts) for c in clicks)
    with (folder / "items.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["item_id", "text", "category", "brand", "price"])
        out.writerows((i.item_id, i.text, i.category or "", i.brand or "", "" if i.price is None else i.price)
                      for i in items.values())
    return {"clicks": len(clicks), "items": len(items), "invalid_clicks": invalid["clicks"],
            "invalid_items": invalid["items"], "folder": str(folder)}
