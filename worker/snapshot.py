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
from pathlib import Path

from infra.runtime.settings import Settings
from infra.runtime.topic_reads import read_up_to
from schemas.codec import InvalidMessage, decode_item, decode_keyed
from schemas.messages import Click, Item


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

    for topic, handle in (("clicks", on_click), ("items", on_item)):
        async for records in read_up_to(settings.kafka_bootstrap, settings.topic(topic)):
            for record in records:
                handle(record.key, record.value)
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
