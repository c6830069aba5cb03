"""The item catalogue prompts name items from (pure): built-in dataset texts overlaid by the ``items`` topic.

:class:`LiveCatalogue` is a read-only :class:`~collections.abc.Mapping` ``item_id -> text`` for the scorer:
the latest ``items`` record of an item wins over the built-in dataset's text (``EXITREC_CATALOGUE``), a
tombstone removes the topic's entry (the built-in text, if any, shows again), and an item known to neither is
absent (prompts then say ``item <id>``, :func:`scorer.context.item_text`). Records are applied in offset order
per partition (the key is the item id, so one item's records share a partition), so "latest" is the log's order.

:class:`BrandIndex` keeps who makes each item (a book's author, a product's brand: the dataset's ``item_brand``
overlaid by the ``brand`` of ``items`` records the same way), by item id and by the payload's item key, so that a
user's reactions to the candidate's brand can be counted from the key lists in the user's payload.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from graph_updater.datasets import Interactions
from graph_updater.online import item_key
from schemas.messages import Item


def brand_key(brand: str) -> str:
    """Brands compare case- and space-insensitively ("J. R. R. Tolkien" is "j. r. r.  tolkien")."""
    return " ".join(brand.casefold().split())


class BrandIndex:
    """item -> brand (:func:`brand_key`): the built-in ``base`` overlaid by the latest ``items`` record's
    ``brand`` (a record without one clears the item's brand; a tombstone restores the built-in one)."""

    def __init__(self, base: Mapping[str, str] | None = None) -> None:
        self.base = {item: brand_key(b) for item, b in (base or {}).items() if b.strip()}
        self.by_key = {item_key(item): b for item, b in self.base.items()}
        self.live: dict[str, str | None] = {}

    def of(self, item_id: str) -> str | None:
        return self.live[item_id] if item_id in self.live else self.base.get(item_id)

    def put(self, item: Item) -> None:
        self._set(item.item_id, brand_key(item.brand) if item.brand else None)

    def drop(self, item_id: str) -> None:
        if self.live.pop(item_id, None) is not None or item_id in self.base:
            self._set(item_id, self.base.get(item_id), live=False)

    def _set(self, item_id: str, brand: str | None, live: bool = True) -> None:
        if live:
            self.live[item_id] = brand
        if brand is None:
            self.by_key.pop(item_key(item_id), None)
        else:
            self.by_key[item_key(item_id)] = brand

    def reactions(self, brand: str | None, liked_keys: Sequence[int], disliked_keys: Sequence[int]
                  ) -> tuple[int, int] | None:
        """(liked, reacted): how many of the items behind ``liked_keys`` and ``disliked_keys`` (a user payload's
        latest reactions, :func:`graph_updater.online.latest_keys`) are of ``brand``; None when it is unknown."""
        if brand is None:
            return None
        liked = sum(self.by_key.get(k) == brand for k in liked_keys)
        return liked, liked + sum(self.by_key.get(k) == brand for k in disliked_keys)


class LiveCatalogue(Mapping[str, str]):
    def __init__(self, base: Mapping[str, str] | None = None, brands: BrandIndex | None = None) -> None:
        self.base: Mapping[str, str] = base or {}
        self.live: dict[str, str] = {}
        self.brands = brands or BrandIndex()

    @classmethod
    def of(cls, data: Interactions) -> LiveCatalogue:
        """The catalogue a worker serving ``data`` starts from (``EXITREC_CATALOGUE``): its texts and brands."""
        return cls(data.item_text, BrandIndex(data.item_brand))

    def put(self, item: Item) -> None:
        self.live[item.item_id] = item.prompt_text()
        self.brands.put(item)

    def drop(self, item_id: str) -> None:
        self.live.pop(item_id, None)
        self.brands.drop(item_id)

    def __getitem__(self, item_id: str) -> str:
        found = self.live.get(item_id)
        return found if found is not None else self.base[item_id]

    def __iter__(self) -> Iterator[str]:
        yield from self.live
        yield from (k for k in self.base if k not in self.live)

    def __len__(self) -> int:
        return len(self.live) + sum(1 for k in self.base if k not in self.live)
