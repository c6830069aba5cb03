"""A dataset's rows as the contract messages an ad system would send: clicks, impression requests, catalogue items
(pure: :mod:`worker.replay` publishes them).

Each row becomes a :class:`~schemas.messages.Click` keyed by user id with a deterministic event id
``<dataset>-<row>`` (row = position in the time-ordered table), so a replay repeated by mistake produces
duplicates that the updater recognises. :func:`impressions_of` turns the same rows into the requests an ad system
would have sent just before: consecutive rows of one user become one request (up to ``max_candidates``
distinct items), id ``<dataset>-imp-<first row>``.
"""

from __future__ import annotations

from graph_updater.datasets import Interactions
from schemas.messages import TS_MIN_MS, Click, ImpressionRequest, Item


def clicks_of(data: Interactions, first_row: int = 0) -> list[Click]:
    """The click events of ``data``; ``first_row`` offsets the row numbers used in event ids."""
    return [Click(event_id=f"{data.name}-{first_row + k}", user_id=u, item_id=i, label=int(y), ts=int(t))
            for k, (u, i, y, t) in enumerate(zip(data.users, data.items, data.labels, data.ts, strict=True))]


def impressions_of(data: Interactions, first_row: int = 0, max_candidates: int = 1) -> list[ImpressionRequest]:
    """Requests for the rows of ``data`` (see the module docstring); ``ts`` is the first row's time."""
    out: list[ImpressionRequest] = []
    start = 0
    while start < len(data):
        user, items, end = data.users[start], [data.items[start]], start + 1
        while (end < len(data) and len(items) < max_candidates and data.users[end] == user
               and data.items[end] not in items):
            items.append(data.items[end])
            end += 1
        out.append(ImpressionRequest(request_id=f"{data.name}-imp-{first_row + start}", user_id=user,
                                     item_ids=items, ts=int(data.ts[start])))
        start = end
    return out


def items_of(data: Interactions) -> list[Item]:
    """The dataset's catalogue as ``items`` records (its item text; ``ts`` = the dataset's first timestamp, when
    the catalogue is taken to exist)."""
    ts = max(int(data.ts.min()), TS_MIN_MS) if len(data) else TS_MIN_MS
    return [Item(item_id=item_id, text=text[:2000], ts=ts) for item_id, text in data.item_text.items() if text]


def key_of(message: Click | ImpressionRequest | Item) -> bytes:
    """The partitioning key of an input message: the item id for ``items``, else the user id."""
    return (message.item_id if isinstance(message, Item) else message.user_id).encode()
