"""Vector store of user and item vectors: Qdrant through qdrant-client (embedded local mode or a server URL).

Two collections, ``<prefix>_users`` and ``<prefix>_items``, cosine distance. A point's id is a UUIDv5 of the
external id (Qdrant ids must be integers or UUIDs); the external id is kept in the payload. User payload:
``user_id``, ``liked``, ``disliked`` (item ids), ``recent_items``, ``recent_labels``, ``last_ts``; item payload:
``item_id``, ``clicks``. "Has interacted with item X" is the filter ``liked ∋ X or disliked ∋ X``.

Local mode (``:memory:`` or a folder) runs Qdrant's query logic in Python inside this process; a URL talks to
a Qdrant server (docker-compose). Both go through the same client API, so code and tests are shared.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from qdrant_client import QdrantClient, models

from graph_updater.graph import ITEM, USER
from graph_updater.online import VectorRecord

NAMESPACE = uuid.UUID("6f1c7c9e-7a58-4f59-9d0e-6f8f3b6d2a11")


def point_id(kind: str, external_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{external_id}"))


@dataclass(frozen=True)
class Neighbour:
    """A similar user found by vector search: id, cosine similarity, and its payload."""

    user_id: str
    score: float
    payload: dict


class VectorStore:
    """Users and items collections in one Qdrant (embedded or server)."""

    def __init__(self, client: QdrantClient, prefix: str = "exitrec") -> None:
        self.client = client
        self.collections = {USER: f"{prefix}_users", ITEM: f"{prefix}_items"}

    @classmethod
    def open(cls, url: str | None = None, path: str = ":memory:", prefix: str = "exitrec",
             timeout_s: float = 5.0) -> VectorStore:
        if url:
            client = QdrantClient(url=url, timeout=int(max(1, timeout_s)))
        elif path == ":memory:":
            client = QdrantClient(location=":memory:")
        else:
            client = QdrantClient(path=path)
        return cls(client, prefix)

    def ensure_collections(self, dim: int) -> None:
        """Create both collections (cosine, ``dim``) and the keyword indexes of the filter fields if missing."""
        for kind, name in self.collections.items():
            if not self.client.collection_exists(name):
                self.client.create_collection(
                    name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
                fields = ("user_id", "liked", "disliked") if kind == USER else ("item_id",)
                for field in fields:
                    self.client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)

    def upsert(self, records: list[VectorRecord], batch: int = 1024) -> int:
        """Write ``records`` (waiting until they are readable); return how many were written."""
        by_kind: dict[str, list[models.PointStruct]] = {USER: [], ITEM: []}
        for r in records:
            by_kind[r.kind].append(models.PointStruct(id=point_id(r.kind, r.external_id), vector=r.vector,
                                                      payload=r.payload))
        for kind, points in by_kind.items():
            for start in range(0, len(points), batch):
                self.client.upsert(self.collections[kind], points=points[start:start + batch], wait=True)
        return len(records)

    def count(self, kind: str) -> int:
        return self.client.count(self.collections[kind], exact=True).count

    def get(self, kind: str, external_id: str) -> tuple[list[float], dict] | None:
        """The vector and payload of one user or item, or None if absent."""
        found = self.client.retrieve(self.collections[kind], ids=[point_id(kind, external_id)],
                                     with_vectors=True, with_payload=True)
        if not found:
            return None
        return list(found[0].vector), dict(found[0].payload or {})

    def similar_users(self, vector: list[float], k: int = 20, exclude_user: str | None = None,
                      interacted_with: str | None = None) -> list[Neighbour]:
        """Top-``k`` users by cosine similarity to ``vector``, optionally only users who reacted to an item."""
        must_not = [models.HasIdCondition(has_id=[point_id(USER, exclude_user)])] if exclude_user else None
        should = None
        if interacted_with is not None:
            should = [models.FieldCondition(key=f, match=models.MatchValue(value=interacted_with))
                      for f in ("liked", "disliked")]
        query_filter = models.Filter(must_not=must_not, should=should) if (must_not or should) else None
        hits = self.client.query_points(self.collections[USER], query=vector, limit=k, query_filter=query_filter,
                                        with_payload=True).points
        return [Neighbour(str(h.payload["user_id"]), float(h.score), dict(h.payload)) for h in hits]

    def close(self) -> None:
        self.client.close()
