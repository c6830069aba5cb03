"""Retrievers: who are the requester's most similar users among those who reacted to a candidate (store I/O).

- :class:`GcnRetriever` (OptiRAG-Rec's GCN-Retriever): the requester's LightGCN vector, as the graph updater
  keeps it in the users collection, is the query; one filtered vector search per candidate.
- :class:`TextRetriever` (the "LLM retriever" it is compared against): the query is a MiniLM sentence embedding
  of the requester's recent history text, computed at request time, searched in a second users collection of
  history embeddings in the same kind of store. Users enter that collection in bulk (:meth:`TextRetriever.index`)
  and again, with a fresh embedding and payload, each time they are the requester.

Both read the same user payload (history for prompts, reaction keys for the filter) and return
:meth:`~graph_updater.store.VectorStore.neighbour_reactions` (the neighbours' reactions to the candidate, read
without their payloads on qdrant-edge), so everything downstream is shared.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog
from tqdm import tqdm

from graph_updater.graph import ITEM, USER
from graph_updater.online import VectorRecord
from graph_updater.store import VectorStore
from scorer.content import SentenceEncoder
from scorer.context import history_from_payload

log = structlog.get_logger("scorer")


@dataclass(frozen=True)
class UserView:
    """A known user (reacted to something): query vector (what the retriever searches with; None when there is
    nothing to search with), LightGCN vector (None while the user has no like edge: ``linked`` false), payload."""

    user_id: str
    vector: list[float] | None
    payload: dict
    graph_vector: list[float] | None


@dataclass(frozen=True)
class ItemView:
    """A known item (someone reacted to it): LightGCN vector (None while nobody liked it) and payload
    (``n_liked``, ``n_disliked``)."""

    item_id: str
    vector: list[float] | None
    payload: dict


def graph_position(found: tuple[list[float], dict]) -> list[float] | None:
    """A stored point's vector when it is a LightGCN position, None for an unlinked node's placeholder (points
    written before the ``linked`` field existed were all linked)."""
    vector, payload = found
    return vector if payload.get("linked", True) else None


def item_view(store: VectorStore, item_id: str) -> ItemView | None:
    found = store.get(ITEM, item_id)
    return None if found is None else ItemView(item_id, graph_position(found), found[1])


def item_views(store: VectorStore, item_ids: list[str]) -> dict[str, ItemView]:
    """:func:`item_view` of several items in one store call (items nobody reacted to are left out)."""
    return {i: ItemView(i, graph_position(found), found[1]) for i, found in store.get_many(ITEM, item_ids).items()}


class Retriever(Protocol):
    name: str

    def user(self, user_id: str) -> UserView | None:
        """The requester's query vector and payload; None for a user who never reacted (cold)."""

    def item(self, item_id: str) -> ItemView | None:
        """The candidate's vector and reaction counts; None for an item nobody has reacted to yet (cold)."""

    def items(self, item_ids: list[str]) -> dict[str, ItemView]:
        """:meth:`item` of several items at once (the user's recent reactions), absent ones left out."""

    def neighbour_reactions(self, user: UserView, item_id: str, k: int) -> list[int]:
        """The reactions (1 liked, 0 disliked) to ``item_id`` of the top-``k`` users most similar to ``user``
        among those who reacted to it, most similar first."""


class GcnRetriever:
    name = "gcn"

    def __init__(self, store: VectorStore) -> None:
        self.store = store

    def user(self, user_id: str) -> UserView | None:
        found = self.store.get(USER, user_id)
        if found is None:
            return None
        position = graph_position(found)
        return UserView(user_id, position, found[1], position)

    def item(self, item_id: str) -> ItemView | None:
        return item_view(self.store, item_id)

    def items(self, item_ids: list[str]) -> dict[str, ItemView]:
        return item_views(self.store, item_ids)

    def neighbour_reactions(self, user: UserView, item_id: str, k: int) -> list[int]:
        return self.store.neighbour_reactions(user.vector, item_id, k, exclude_user=user.user_id)


def history_text(payload: dict, text_of, history_len: int) -> str:
    """The text a history embedding is computed from: ``liked: A; disliked: B; ...`` (oldest first)."""
    history = history_from_payload(payload, text_of, history_len)
    return "; ".join(f"{'liked' if label else 'disliked'}: {text}" for text, label in history) or "no history"


class TextRetriever:
    name = "text"

    def __init__(self, store: VectorStore, text_store: VectorStore, encoder: SentenceEncoder, text_of,
                 history_len: int = 10) -> None:
        self.store, self.text_store, self.encoder = store, text_store, encoder
        self.text_of, self.history_len = text_of, history_len
        self.text_store.ensure_collections(encoder.dim)

    def index(self, user_ids: list[str], batch_size: int = 64) -> int:
        """Embed the histories of ``user_ids`` (those with a payload in the GCN store) into the text collection."""
        written = 0
        for start in range(0, len(user_ids), batch_size):
            found = [(u, self.store.get(USER, u)) for u in user_ids[start:start + batch_size]]
            found = [(u, f[1]) for u, f in found if f is not None]
            if not found:
                continue
            vectors = self.encoder.encode([history_text(p, self.text_of, self.history_len) for _, p in found])
            written += self.text_store.upsert([VectorRecord(USER, u, v.tolist(), p)
                                               for (u, p), v in zip(found, vectors, strict=True)])
        return written

    def user(self, user_id: str) -> UserView | None:
        found = self.store.get(USER, user_id)
        if found is None:
            return None
        payload = found[1]
        vector = self.encoder.encode([history_text(payload, self.text_of, self.history_len)])[0].tolist()
        self.text_store.upsert([VectorRecord(USER, user_id, vector, payload)])
        return UserView(user_id, vector, payload, graph_position(found))

    def item(self, item_id: str) -> ItemView | None:
        return item_view(self.store, item_id)

    def items(self, item_ids: list[str]) -> dict[str, ItemView]:
        return item_views(self.store, item_ids)

    def neighbour_reactions(self, user: UserView, item_id: str, k: int) -> list[int]:
        return self.text_store.neighbour_reactions(user.vector, item_id, k, exclude_user=user.user_id)


def index_most_active(retriever: TextRetriever, histories: Mapping, limit: int, progress: bool = True) -> int:
    """Embed the histories of the ``limit`` users with the most reactions in ``histories`` (the graph updater's
    :class:`~graph_updater.online.UserHistory` per user) into the text retriever's collection; the count written."""
    def reactions(user: str) -> int:
        return len(histories[user].liked) + len(histories[user].disliked)

    active = sorted(histories, key=reactions, reverse=True)[:limit]
    started = time.perf_counter()
    written = sum(retriever.index(active[k:k + 512]) for k in tqdm(range(0, len(active), 512), disable=not progress,
                                                                    desc="text retriever index", unit="x512"))
    log.info("text_index_built", users=written, seconds=round(time.perf_counter() - started, 1))
    return written
