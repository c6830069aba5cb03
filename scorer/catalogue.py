"""The item catalogue prompts name items from (pure): built-in dataset texts overlaid by the ``items`` topic.

:class:`LiveCatalogue` is a read-only :class:`~collections.abc.Mapping` ``item_id -> text`` for the scorer:
the latest ``items`` record of an item wins over the built-in dataset's text (``EXITREC_CATALOGUE``), a
tombstone removes the topic's entry (the built-in text, if any, shows again), and an item known to neither is
absent (prompts then say ``item <id>``, :func:`scorer.context.item_text`). Records are applied in offset order
per partition (the key is the item id, so one item's records share a partition), so "latest" is the log's order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from schemas.messages import Item


class LiveCatalogue(Mapping[str, str]):
    def __init__(self, base: Mapping[str, str] | None = None) -> None:
        self.base: Mapping[str, str] = base or {}
        self.live: dict[str, str] = {}

    def put(self, item: Item) -> None:
        self.live[item.item_id] = item.prompt_text()

    def drop(self, item_id: str) -> None:
        self.live.pop(item_id, None)

    def __getitem__(self, item_id: str) -> str:
        found = self.live.get(item_id)
        return found if found is not None else self.base[item_id]

    def __iter__(self) -> Iterator[str]:
        yield from self.live
        yield from (k for k in self.base if k not in self.live)

    def __len__(self) -> int:
        return len(self.live) + sum(1 for k in self.base if k not in self.live)
