"""Vector store of user and item vectors, in Qdrant: two interchangeable backends behind :class:`VectorStore`.

- :class:`EdgeStore` (the embedded default): qdrant-edge-py, Qdrant's own Rust engine in the process, one shard
  per collection in a folder. ``bench/results/graph.json``: 10-100x faster queries than local mode, which
  evaluates filters in Python;
- :class:`QdrantStore`: qdrant-client, a Qdrant server (URL) or its embedded local mode.

Two collections, ``<prefix>_users`` and ``<prefix>_items``, cosine distance. A point's id is a UUIDv5 of the
external id (Qdrant ids must be integers or UUIDs); the external id is kept in the payload.

User payload: ``user_id``; ``liked_keys`` / ``disliked_keys``, the :func:`~graph_updater.online.item_key` of the
user's latest 100 liked / disliked items when the point was last written whole, and ``liked_new`` /
``disliked_new``, the keys of the reactions since (at most 16 each: the updater patches a user's point instead of
rewriting its lists, :class:`~graph_updater.online.UserHistory`; :func:`~graph_updater.online.payload_keys`
reads the latest 100 back); ``n_liked``, ``n_disliked`` (totals); ``recent``, a JSON string of the
latest ``[item_id, label, ts]`` reactions (for prompts); ``last_ts``. Item payload: ``item_id``, ``n_liked`` and
``n_disliked`` (every reaction the item received so far: the item's like rate, rewritten on each reaction).
Both carry ``linked``: false for a node with reactions but no like edge yet (its vector is a placeholder, not a
graph position: :meth:`graph_updater.online.GraphUpdater.records`).
"Has reacted to item X" is the filter ``key(X)`` in any of the four key lists; only those four fields are
indexed (points are found by id, a UUIDv5 of the external id, never by an id field). A record without payload
(``VectorRecord.payload is None``: a refinement moved the vector) rewrites the vector alone; a ``merge`` record
rewrites the vector and sets its payload's fields, keeping the point's others.

qdrant-client's local mode runs Qdrant's query logic in Python inside this process; a URL talks to a Qdrant
server (docker-compose). Both go through the same client API, so code and tests are shared.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import qdrant_edge as edge
import structlog
from qdrant_client import QdrantClient, models

from graph_updater.graph import ITEM, USER
from graph_updater.online import KEY_FIELDS, GraphUpdater, VectorRecord, item_key

NAMESPACE = uuid.UUID("6f1c7c9e-7a58-4f59-9d0e-6f8f3b6d2a11")
REACTION_FIELDS = (*KEY_FIELDS[1], *KEY_FIELDS[0])
# the only indexed fields. The reaction key lists are filtered by exact match only (``MatchValue``), so their
# integer indexes keep a lookup map and no range index: a whole user point (up to 100 + 100 keys) writes ~2.5x
# faster on qdrant-edge (20,000 users: 66-89 against 209-255 us a point, README: the click path), exact-match
# filters as fast
TEMPORARY_PREFIX = "exitrec-edge-"  # + "<pid>-<random>": a temporary EdgeStore's folder in the system temp dir

log = structlog.get_logger("store")


@functools.lru_cache(maxsize=1 << 20)
def point_id(kind: str, external_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{external_id}"))


@dataclass(frozen=True)
class Neighbour:
    """A similar user found by vector search: id, cosine similarity, and its payload."""

    user_id: str
    score: float
    payload: dict

    def reaction_to(self, item_id: str) -> int | None:
        """1 if this user recently liked ``item_id``, 0 if disliked, None if no recent reaction."""
        key = item_key(item_id)
        for label, fields in KEY_FIELDS.items():
            if any(key in (self.payload.get(f) or ()) for f in fields):
                return label
        return None


class VectorStore(ABC):
    """Users and items collections; every backend answers the same calls."""

    @abstractmethod
    def ensure_collections(self, dim: int) -> None:
        """Create both collections (cosine, ``dim``) and keyword indexes of the filter fields if missing."""

    @abstractmethod
    def upsert(self, records: list[VectorRecord]) -> int:
        """Write ``records`` so that they are readable on return (a record without payload: its vector only; a
        ``merge`` record: its vector and its payload's fields, the point keeping its other fields); return how
        many were written."""

    @abstractmethod
    def delete(self, kind: str, external_ids: list[str]) -> None:
        """Remove the points of ``external_ids`` (absent ones are ignored)."""

    @abstractmethod
    def count(self, kind: str) -> int: ...

    @abstractmethod
    def get(self, kind: str, external_id: str) -> tuple[list[float], dict] | None:
        """The (unit) vector and payload of one user or item, or None if absent."""

    def get_many(self, kind: str, external_ids: list[str]) -> dict[str, tuple[list[float], dict]]:
        """:meth:`get` of several points in one store call, keyed by external id (absent ones left out)."""
        found = self._retrieve(kind, [point_id(kind, x) for x in dict.fromkeys(external_ids)]) if external_ids else []
        id_field = "user_id" if kind == USER else "item_id"
        return {str(p.payload[id_field]): (list(p.vector), dict(p.payload)) for p in found}

    @abstractmethod
    def _retrieve(self, kind: str, point_ids: list[str]) -> list:
        """Points (``vector``, ``payload`` attributes) of the given ids that exist, in any order."""

    @abstractmethod
    def similar_users(self, vector: list[float], k: int = 20, exclude_user: str | None = None,
                      interacted_with: str | None = None) -> list[Neighbour]:
        """Top-``k`` users by cosine similarity to ``vector``, optionally only users who reacted to an item."""

    def neighbour_reactions(self, vector: list[float], item_id: str, k: int,
                            exclude_user: str | None = None) -> list[int]:
        """The reactions (1 liked, 0 disliked) to ``item_id`` of the top-``k`` users most similar to ``vector``
        among those whose payload lists a reaction to it, most similar first: what a prompt's neighbour line
        counts. This reads the neighbours' whole payloads; a backend that can ask for less overrides it."""
        found = self.similar_users(vector, k=k, exclude_user=exclude_user, interacted_with=item_id)
        return [r for n in found if (r := n.reaction_to(item_id)) is not None]

    @abstractmethod
    def optimize(self) -> None:
        """Build indexes after a bulk load (backends that index lazily)."""

    @abstractmethod
    def close(self) -> None: ...


class QdrantStore(VectorStore):
    """qdrant-client: embedded local mode or a Qdrant server."""

    def __init__(self, client: QdrantClient, prefix: str = "exitrec") -> None:
        self.client = client
        self.collections = {USER: f"{prefix}_users", ITEM: f"{prefix}_items"}

    @classmethod
    def open(cls, url: str | None = None, path: str = ":memory:", prefix: str = "exitrec",
             timeout_s: float = 5.0) -> QdrantStore:
        if url:
            client = QdrantClient(url=url, timeout=int(max(1, timeout_s)))
        elif path == ":memory:":
            client = QdrantClient(location=":memory:")
        else:
            client = QdrantClient(path=path)
        return cls(client, prefix)

    def ensure_collections(self, dim: int) -> None:
        for kind, name in self.collections.items():
            if not self.client.collection_exists(name):
                self.client.create_collection(
                    name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
                with warnings.catch_warnings():  # local mode warns that it has no payload indexes: known
                    warnings.simplefilter("ignore", UserWarning)
                    for field in REACTION_FIELDS if kind == USER else ():
                        self.client.create_payload_index(name, field, models.IntegerIndexParams(
                            type=models.IntegerIndexType.INTEGER, lookup=True, range=False))

    def upsert(self, records: list[VectorRecord], batch: int = 1024) -> int:
        for kind in (USER, ITEM):
            mine = [r for r in records if r.kind == kind]
            whole = [models.PointStruct(id=point_id(kind, r.external_id), vector=r.vector, payload=r.payload)
                     for r in mine if r.payload is not None and not r.merge]
            moved = [models.PointVectors(id=point_id(kind, r.external_id), vector=r.vector)
                     for r in mine if r.payload is None or r.merge]
            patches = [models.SetPayloadOperation(set_payload=models.SetPayload(
                payload=r.payload, points=[point_id(kind, r.external_id)])) for r in mine if r.merge]
            for start in range(0, len(whole), batch):
                self.client.upsert(self.collections[kind], points=whole[start:start + batch], wait=True)
            for start in range(0, len(moved), batch):
                self.client.update_vectors(self.collections[kind], points=moved[start:start + batch], wait=True)
            for start in range(0, len(patches), batch):
                self.client.batch_update_points(self.collections[kind], patches[start:start + batch], wait=True)
        return len(records)

    def delete(self, kind: str, external_ids: list[str]) -> None:
        if external_ids:
            self.client.delete(self.collections[kind], wait=True, points_selector=models.PointIdsList(
                points=[point_id(kind, e) for e in external_ids]))

    def count(self, kind: str) -> int:
        return self.client.count(self.collections[kind], exact=True).count

    def _retrieve(self, kind: str, point_ids: list[str]) -> list:
        return self.client.retrieve(self.collections[kind], ids=point_ids, with_vectors=True, with_payload=True)

    def get(self, kind: str, external_id: str) -> tuple[list[float], dict] | None:
        found = self._retrieve(kind, [point_id(kind, external_id)])
        if not found:
            return None
        return list(found[0].vector), dict(found[0].payload or {})

    def similar_users(self, vector: list[float], k: int = 20, exclude_user: str | None = None,
                      interacted_with: str | None = None) -> list[Neighbour]:
        must_not = [models.HasIdCondition(has_id=[point_id(USER, exclude_user)])] if exclude_user else None
        should = None
        if interacted_with is not None:
            should = [models.FieldCondition(key=f, match=models.MatchValue(value=item_key(interacted_with)))
                      for f in REACTION_FIELDS]
        query_filter = models.Filter(must_not=must_not, should=should) if (must_not or should) else None
        hits = self.client.query_points(self.collections[USER], query=vector, limit=k, query_filter=query_filter,
                                        with_payload=True).points
        return [Neighbour(str(h.payload["user_id"]), float(h.score), dict(h.payload)) for h in hits]

    def optimize(self) -> None:
        return None  # Qdrant (server and local mode) indexes as it writes

    def close(self) -> None:
        self.client.close()


def sweep_stale_stores(root: Path) -> int:
    """Remove the temporary store folders under ``root`` whose process has ended (``exitrec-edge-<pid>-*`` with
    no live ``pid``); return how many. A process killed before :meth:`EdgeStore.close` (a crashed or killed
    worker, an interrupted test or benchmark) leaves its whole store behind, hundreds of MB for a real dataset:
    found filling a 64 GB disk with ~800 of them. Folders of a live pid, or without one, are left alone. Pids are
    this machine's (or container's): processes in other pid namespaces must not share the temp dir (compose gives
    every container its own ``/tmp``)."""
    removed = freed = 0
    for path in root.glob(f"{TEMPORARY_PREFIX}*"):
        pid = path.name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):  # another process may be sweeping it too
            freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    if removed:
        log.warning("stale_temporary_stores_removed", folders=removed, mb=round(freed / 2**20, 1), root=str(root))
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, not ours to signal
        pass
    return True


class EdgeStore(VectorStore):
    """qdrant-edge-py: one :class:`qdrant_edge.EdgeShard` per collection under ``folder`` (Rust, in-process).

    New shards keep their payloads in memory (``Memory.Cached``; the engine's default reads them from disk), and a
    temporary store (no ``folder``: removed on close, rebuilt from the click log on every start) writes no
    write-ahead log, which only a store that outlives its process needs. Together they cut the Book-Crossing
    click path's store writes by 12-18% (four back-to-back comparisons; README, Benchmarks: the click path)."""

    def __init__(self, folder: str | Path | None = None, prefix: str = "exitrec", hnsw: dict | None = None) -> None:
        """``hnsw``: ``qdrant_edge.HnswIndexConfig`` fields for new collections (None: the engine's defaults)."""
        self.hnsw = hnsw
        self.temporary = folder is None  # removed on close, like an in-memory store
        self.remove_folder: weakref.finalize | None = None
        if self.temporary:
            sweep_stale_stores(Path(tempfile.gettempdir()))
            self.folder = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-"))
            # run by close(), or when the store is collected or the interpreter exits without it (once either way)
            self.remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        else:
            self.folder = Path(folder)
        self.paths = {USER: self.folder / f"{prefix}_users", ITEM: self.folder / f"{prefix}_items"}
        self.shards: dict[str, edge.EdgeShard] = {}

    def ensure_collections(self, dim: int) -> None:
        for kind, path in self.paths.items():
            if kind in self.shards:
                continue
            if path.exists() and any(path.iterdir()):
                self.shards[kind] = edge.EdgeShard.load(str(path))
                continue
            path.mkdir(parents=True, exist_ok=True)
            shard = edge.EdgeShard.create(str(path), edge.EdgeConfig(
                vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine),
                hnsw_config=edge.HnswIndexConfig(**self.hnsw) if self.hnsw else None,
                payload_memory=edge.Memory.Cached, wal_enabled=False if self.temporary else None))
            for field in REACTION_FIELDS if kind == USER else ():
                shard.update(edge.UpdateOperation.create_field_index(
                    field, edge.IntegerIndexParams(lookup=True, range=False)))
            self.shards[kind] = shard

    def upsert(self, records: list[VectorRecord], batch: int = 4096) -> int:
        for kind in (USER, ITEM):
            shard, mine = self.shards[kind], [r for r in records if r.kind == kind]
            whole = [edge.Point(point_id(kind, r.external_id), r.vector, r.payload)
                     for r in mine if r.payload is not None and not r.merge]
            moved = [edge.PointVectors(point_id(kind, r.external_id), r.vector)
                     for r in mine if r.payload is None or r.merge]
            for start in range(0, len(whole), batch):
                shard.update(edge.UpdateOperation.upsert_points(whole[start:start + batch]))
            for start in range(0, len(moved), batch):
                shard.update(edge.UpdateOperation.update_vectors(moved[start:start + batch]))
            for r in mine:
                if r.merge:  # one operation per point: the engine sets one payload on a list of ids
                    shard.update(edge.UpdateOperation.set_payload([point_id(kind, r.external_id)], r.payload))
        return len(records)

    def delete(self, kind: str, external_ids: list[str]) -> None:
        if external_ids:
            self.shards[kind].update(edge.UpdateOperation.delete_points([point_id(kind, e) for e in external_ids]))

    def count(self, kind: str) -> int:
        return self.shards[kind].count(edge.CountRequest(exact=True))

    def _retrieve(self, kind: str, point_ids: list[str]) -> list:
        return self.shards[kind].retrieve(point_ids, with_payload=True, with_vector=True)

    def get(self, kind: str, external_id: str) -> tuple[list[float], dict] | None:
        found = self._retrieve(kind, [point_id(kind, external_id)])
        if not found:
            return None
        return list(found[0].vector), dict(found[0].payload or {})

    @staticmethod
    def _user_filter(exclude_user: str | None, interacted_with: str | None) -> edge.Filter | None:
        """Not ``exclude_user``; when ``interacted_with`` is given, only users whose key lists hold the item."""
        must_not = [edge.HasIdCondition({point_id(USER, exclude_user)})] if exclude_user else None
        should = None
        if interacted_with is not None:
            should = [edge.FieldCondition(key=f, match=edge.MatchValue(item_key(interacted_with)))
                      for f in REACTION_FIELDS]
        return edge.Filter(must_not=must_not, should=should) if (must_not or should) else None

    def similar_users(self, vector: list[float], k: int = 20, exclude_user: str | None = None,
                      interacted_with: str | None = None, exact: bool = False) -> list[Neighbour]:
        """``exact``: a full scan instead of the HNSW index (what a benchmark measures the index's recall by)."""
        hits = self.shards[USER].query(edge.QueryRequest(limit=k, query=edge.Query.Nearest(vector),
                                                         filter=self._user_filter(exclude_user, interacted_with),
                                                         with_payload=True,
                                                         params=edge.SearchParams(exact=True) if exact else None))
        return [Neighbour(str(h.payload["user_id"]), float(h.score), dict(h.payload)) for h in hits]

    def neighbour_reactions(self, vector: list[float], item_id: str, k: int,
                            exclude_user: str | None = None) -> list[int]:
        """Two payload-free queries instead of one returning ``k`` whole payloads (each up to 100 + 100 keys,
        converted element by element: most of a filtered search's time): the top-``k`` reactors' ids, then which
        of those ids list the item among their likes (a scroll over those ids). 10,000 users with 100 + 100 keys,
        top-10: 0.70 ms against 1.27 ms reading the payloads."""
        shard = self.shards[USER]
        hits = shard.query(edge.QueryRequest(limit=k, query=edge.Query.Nearest(vector),
                                             filter=self._user_filter(exclude_user, item_id), with_payload=False))
        if not hits:
            return []
        likers = edge.Filter(must=[edge.HasIdCondition({h.id for h in hits})],
                             should=[edge.FieldCondition(key=f, match=edge.MatchValue(item_key(item_id)))
                                     for f in KEY_FIELDS[1]])
        liked = {p.id for p in shard.scroll(edge.ScrollRequest(limit=k, filter=likers, with_payload=False,
                                                               with_vector=False))[0]}
        return [int(h.id in liked) for h in hits]

    def optimize(self) -> None:
        """Index the users (their vector search needs the HNSW graph). Items are only ever read by id, so their
        shard is left as written: an optimized segment is immutable, and every later write of a point in it
        first copies the point out (~40-70 us against ~5-15 us for a point already in an appendable segment)."""
        self.shards[USER].optimize()

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()
        if self.remove_folder is not None:
            self.remove_folder()


def embedded_copy(updater: GraphUpdater) -> EdgeStore:
    """A temporary qdrant-edge store holding every vector and payload of ``updater`` (training samples and
    tests replay a stream into it; close it when done)."""
    store = EdgeStore()
    store.ensure_collections(updater.graph.dim)
    store.upsert(updater.all_records())
    return store


def open_store(backend: str = "edge", url: str | None = None, path: str = ":memory:",
               prefix: str = "exitrec") -> VectorStore:
    """A Qdrant server through qdrant-client when ``url`` is set; otherwise the embedded ``backend``: ``edge``
    (qdrant-edge; ``path`` a folder, ``:memory:`` a temporary one) or ``qdrant`` (qdrant-client local mode)."""
    if url:
        return QdrantStore.open(url, path, prefix)
    if backend == "edge":
        return EdgeStore(None if path == ":memory:" else path, prefix)
    if backend == "qdrant":
        return QdrantStore.open(None, path, prefix)
    raise ValueError(f"unknown vector backend {backend!r}: use 'edge' or 'qdrant'")
