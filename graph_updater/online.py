"""Click micro-batches -> changed user/item vectors with payload (pure: no Kafka, no vector store).

:class:`GraphUpdater` owns the graph and each user's reaction history. ``apply`` is idempotent per click: an
edge is a set member (click 1 adds it, a later 0 for the same pair removes it: the latest reaction wins), and a
click whose ``event_id`` is among its user's recent events changes nothing (a redelivery or a producer's retry).
A restarted updater needs no memory of older event ids: it rebuilds from its checkpoint and replays the click log
up to its committed offsets, then continues from there, so state is bounded by users, items and edges, never by
the number of clicks seen.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii

import numpy as np

from graph_updater.graph import ITEM, USER, LightGCNGraph, split_node_key
from graph_updater.train import Refined, RefineJob
from schemas.codec import decode_keyed
from schemas.messages import Click

PAYLOAD_MAX_ITEMS = 100  # latest reactions per polarity kept filterable in the payload
PAYLOAD_MAX_NEW = 16  # reactions per polarity a payload patch appends before the user's next whole payload
NOTHING_NEW = ((), ())  # UserHistory.new right after a whole payload: shared, lists only once a key arrives
# a user payload's key lists per label (1 liked, 0 disliked): the whole list, then what patches appended since
KEY_FIELDS = {1: ("liked_keys", "liked_new"), 0: ("disliked_keys", "disliked_new")}


@functools.lru_cache(maxsize=1 << 20)
def item_key(item_id: str) -> int:
    """Stable 63-bit integer key of an item id for payload filter fields. Integers, not strings: qdrant-edge
    converts a payload list element in ~1.6 us as an int and ~5 us as a string (measured), per point write."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big") >> 1


def latest_keys(reactions: dict[str, int]) -> list[int]:
    """Item keys of the latest :data:`PAYLOAD_MAX_ITEMS` reactions, oldest first (reads only those, not all)."""
    latest = list(itertools.islice(reversed(reactions), PAYLOAD_MAX_ITEMS))
    return [item_key(i) for i in reversed(latest)]


def payload_keys(payload: dict, label: int) -> list[int]:
    """:func:`latest_keys` of a user's liked (1) or disliked (0) items, read from a stored payload: its whole list
    (``liked_keys``) followed by what patches appended since (``liked_new``), last :data:`PAYLOAD_MAX_ITEMS`."""
    whole, new = KEY_FIELDS[label]
    return ((payload.get(whole) or []) + (payload.get(new) or []))[-PAYLOAD_MAX_ITEMS:]


def merged_payload(payload: dict) -> dict:
    """A stored user payload as one whole write of the same history leaves it: the latest keys in
    ``liked_keys`` / ``disliked_keys`` (:func:`payload_keys`), nothing in ``liked_new`` / ``disliked_new``.
    Equal for equal histories however the point was patched (what comparisons of stores use)."""
    merged = dict(payload)
    for label, (whole, new) in KEY_FIELDS.items():
        merged[whole], merged[new] = payload_keys(payload, label), []
    return merged


def unlinked_vector(key: str, dim: int) -> list[float]:
    """The stored vector of a node without like edges: ``dim`` values uniform on [-0.1, 0.1] in steps of 1/1275,
    from the SHAKE-128 digest of the node key (stable across runs and processes; ~6 us, where seeding a numpy
    generator per node took ~20 us and took a lock)."""
    digest = np.frombuffer(hashlib.shake_128(key.encode()).digest(dim), dtype=np.uint8)
    return ((digest.astype(np.float32) - 127.5) / 1275.0).tolist()


def parse_click(key: bytes | None, value: bytes | None) -> Click:
    """Decode a ``clicks`` record; its key, when present, must be the user id (the partitioning contract)."""
    return decode_keyed(Click, key, value)


@dataclass(slots=True)
class UserHistory:
    """A user's reactions: liked/disliked item ids (insertion-ordered, latest reaction wins) and recent events.

    Idempotency window: ``recent_events`` (the ids of the user's last ``window`` events; the worker's
    ``EXITREC_PAYLOAD_RECENT_ITEMS``, default 20) doubles as the set of event ids already applied, so memory per
    user is bounded by the window, not by the user's click count (every event id used to be kept forever). A
    duplicate arriving after ``window`` newer clicks of the same user is applied again: the graph does not change
    (an edge is a set member), but the item's reaction counts and the user's recent list take it twice. The window
    is per user, so it evolves the same whichever way partitions interleave (each user's clicks are ordered in
    their partition): a replay after a restart reaches exactly the same state. A plain list trimmed on append,
    not a ``deque``: CPython gives every deque a 64-slot block, ~0.6 KB a user whatever its window (measured:
    64 MB of the Book-Crossing updater's 588 MB).

    Payload patches: a user's stored point is written whole (:meth:`payload`) once, then patched
    (:meth:`patch`): a reaction to an item new to the user appends its key to ``new`` instead of rewriting the
    up to 100 + 100 keys (each converted and indexed by the store: on qdrant-edge the Book-Crossing stream's
    writes took 8.0 s per 60,000 clicks with patches, 11.5 s with every user point whole). The next payload is
    whole again when an item moved (re-liked, or liked then disliked: its key must leave a list) or a side's
    ``new`` would pass :data:`PAYLOAD_MAX_NEW`."""

    liked: dict[str, int] = field(default_factory=dict)
    disliked: dict[str, int] = field(default_factory=dict)
    window: int = 20
    recent_events: list = field(default_factory=list)  # their event ids, oldest first, <= window
    # the same events as JSON texts of [item_id, label, ts]: each reaction encoded once, when it arrives (~0.5 us),
    # not again in every patch that lists it (json.dumps of the list per patch: ~15% of the click path's graph
    # stage); the same text as json.dumps with compact separators. Two flat lists, not a list of tuples: ~45 bytes
    # less per event, which pays for part of the texts (Book-Crossing updater 555 MB, 545 before the texts)
    recent: list = field(default_factory=list)
    last_ts: int = 0  # the time of the latest event
    # latest_keys() of the disliked [0] and liked [1] items, kept up to date (None: rebuilt at the next payload)
    latest: list = field(default_factory=lambda: [None, None], init=False, repr=False, compare=False)
    # keys of the disliked [0] and liked [1] reactions since the last whole payload; None: the next must be whole
    new: list | tuple | None = field(default=None, init=False, repr=False, compare=False)

    def record(self, event_id: str, item_id: str, label: int, ts: int) -> bool:
        """Record one reaction; False if ``event_id`` is among the recent events (nothing changes).

        The payload's key lists follow by appending (a reaction to an item new to the user); a reaction that
        moves an item (re-liked, or liked then disliked) drops the cached list, rebuilt at the next payload."""
        if event_id in self.recent_events:  # a C-level scan of the window
            return False
        mine, other = (self.liked, self.disliked) if label == 1 else (self.disliked, self.liked)
        if other.pop(item_id, None) is not None:
            self.latest[1 - label] = self.new = None
        if mine.pop(item_id, None) is not None:
            self.latest[label] = self.new = None
        mine[item_id] = ts
        key = item_key(item_id)
        keys = self.latest[label]
        if keys is not None:
            keys.append(key)
            if len(keys) > PAYLOAD_MAX_ITEMS:
                del keys[0]
        if self.new is not None:
            if len(self.new[label]) >= PAYLOAD_MAX_NEW:
                self.new = None
            else:
                if self.new is NOTHING_NEW:
                    self.new = [[], []]
                self.new[label].append(key)
        self.recent_events.append(event_id)
        self.recent.append(f"[{encode_basestring_ascii(item_id)},{label:d},{ts:d}]")
        self.last_ts = ts
        if len(self.recent) > self.window:
            del self.recent_events[0], self.recent[0]
        return True

    def reaction_keys(self, label: int) -> list[int]:
        """:func:`latest_keys` of the liked (1) or disliked (0) items, from the cache when it is current."""
        keys = self.latest[label]
        if keys is None:
            keys = self.latest[label] = latest_keys(self.liked if label == 1 else self.disliked)
        return list(keys)

    def payload(self, user_id: str, recent_n: int) -> dict:
        """The whole vector-store payload of a user (contract in :mod:`graph_updater.store`); later
        :meth:`patch` calls are relative to it."""
        self.new = NOTHING_NEW
        return {"user_id": user_id, "liked_keys": self.reaction_keys(1), "disliked_keys": self.reaction_keys(0),
                **self.patch(recent_n)}

    def patch(self, recent_n: int) -> dict:
        """The fields that changed since the last :meth:`payload` (which must have been written, and no item
        moved since: ``new`` is not None): counts, recent reactions, and the keys appended since then."""
        return {
            "liked_new": list(self.new[1]),
            "disliked_new": list(self.new[0]),
            "n_liked": len(self.liked),
            "n_disliked": len(self.disliked),
            "recent": f"[{','.join(self.recent[-recent_n:])}]",
            "last_ts": self.last_ts,
        }


@dataclass(frozen=True)
class VectorRecord:
    """One point to write: ``kind`` is ``u`` (users collection) or ``i`` (items collection). ``payload`` None
    rewrites the vector alone; ``merge`` sets the payload's fields on the stored point, keeping its others (a
    :meth:`UserHistory.patch`); otherwise the point is replaced."""

    kind: str
    external_id: str
    vector: list[float]
    payload: dict | None
    merge: bool = False


class GraphUpdater:
    """Applies click micro-batches to a :class:`LightGCNGraph` and reports the vectors that changed."""

    def __init__(self, graph: LightGCNGraph, recent_n: int = 20, radius: int = 0,
                 recent_edges: int = 50_000) -> None:
        self.graph, self.recent_n, self.radius = graph, recent_n, radius
        self.histories: dict[str, UserHistory] = {}
        self.item_reactions: dict[str, list[int]] = {}  # item id -> [likes, dislikes] over all its clicks
        self.recent_pairs: deque[tuple[int, int]] = deque(maxlen=recent_edges)
        self.clicks_since_refine = 0
        self.changed_since_job: set[int] | None = None  # while a refinement's copy is out (refine_job)

    def history(self, user_id: str) -> UserHistory:
        h = self.histories.get(user_id)
        if h is None:
            h = self.histories[user_id] = UserHistory(window=self.recent_n)
        return h

    def _react(self, event_id: str, user_id: str, item_id: str, label: int, ts: int) -> tuple[int, int, bool] | None:
        """Record one reaction in the user's history and the item's counts and set its edge: (user node, item
        node, whether the edge changed), or None for an event id already applied (nothing changes)."""
        if not self.history(user_id).record(event_id, item_id, label, ts):
            return None
        counts = self.item_reactions.setdefault(item_id, [0, 0])
        counts[0 if label == 1 else 1] += 1
        u, i = self.graph.ensure_node(USER, user_id), self.graph.ensure_node(ITEM, item_id)
        return u, i, self.graph.link(u, i, label == 1)

    def ingest(self, event_ids: Sequence[str], users: Sequence[str], items: Sequence[str],
               labels: Sequence[int], ts: Sequence[int]) -> None:
        """Load history rows (e.g. the offline training split) into the graph without recomputing layers."""
        for row in zip(event_ids, users, items, labels, ts, strict=True):
            self._react(*row)

    def update(self, clicks: Sequence[Click]) -> set[int]:
        """Apply a batch of clicks to the graph and histories; return the nodes whose vector or payload changed.
        (Recovery replays with this alone: its vectors are written once, after the whole replay.)

        One pass over the clicks resolves each click's two nodes once and sets its edge; the layer arithmetic
        then runs once for the batch (:meth:`~graph_updater.graph.LightGCNGraph.refresh`)."""
        touched, reacting, applied = set(), set(), 0
        for c in clicks:
            reacted = self._react(c.event_id, c.user_id, c.item_id, c.label, c.ts)
            if reacted is None:
                continue
            u, i, changed = reacted
            applied += 1
            reacting.add(u)
            reacting.add(i)
            if changed:
                touched.add(u)
                touched.add(i)
            if c.label == 1:
                self.recent_pairs.append((u, i))
        self.graph.refresh(touched, radius=self.radius)
        if self.changed_since_job is not None:
            self.changed_since_job |= touched
        self.clicks_since_refine += applied
        return reacting

    def apply(self, clicks: Sequence[Click]) -> list[VectorRecord]:
        """Apply a batch of clicks; return the changed user and item vectors (users with no edge are skipped)."""
        return self.records(self.update(clicks))

    def refine_job(self) -> RefineJob | None:
        """A copy of what a refinement reads (:class:`~graph_updater.train.RefineJob`) over the recent click edges
        still present; None when there are none. Restarts the count of clicks since the last refinement and
        starts recording the nodes whose edges change until :meth:`merge_refined`."""
        pairs = np.array([p for p in self.recent_pairs if p[1] in self.graph.adj[p[0]]], dtype=np.int64)
        self.clicks_since_refine = 0
        if not len(pairs):
            return None
        self.changed_since_job = set()
        return RefineJob.of(self.graph, pairs.reshape(-1, 2))

    def merge_refined(self, job: RefineJob, refined: Refined) -> list[VectorRecord]:
        """Adopt a refinement computed on ``job`` while clicks went on: the job's nodes take its layers (and its
        learned nodes count as trained), then the nodes whose edges changed since the copy are folded in and
        recomputed from those as a click batch would (:meth:`~graph_updater.graph.LightGCNGraph.refresh`). The
        graph ends as if the refinement had been merged at the copy and the later clicks applied after it in
        one batch.
        Returns vector-only records (no reaction changed) of the nodes that moved and of those recomputed."""
        n, graph = len(job.base), self.graph
        changed, self.changed_since_job = self.changed_since_job or set(), None
        graph.layers[:, :n] = refined.layers
        graph.trained[:n] |= job.learned
        recomputed = graph.refresh(changed, radius=self.radius)
        return self.vectors(np.union1d(np.flatnonzero(refined.moved), recomputed))

    def drop_refinement(self) -> None:
        """Forget the copy a failed refinement was computed on (stop recording changed nodes for it)."""
        self.changed_since_job = None

    def vectors(self, nodes) -> list[VectorRecord]:
        """Vector-only records (``payload`` None) of the nodes of ``nodes`` that have a like edge (the others'
        stored vector is their fixed placeholder, which no embedding move changes)."""
        chosen = np.array([v for v in sorted(set(nodes)) if self.graph.adj[v]], dtype=np.int64)
        return [VectorRecord(*split_node_key(self.graph.keys[v]), vector, None)
                for v, vector in zip(chosen.tolist(), self.graph.final(chosen).tolist(), strict=True)]

    def records(self, nodes, whole: bool = False) -> list[VectorRecord]:
        """Vector records of ``nodes`` (every node that reacted or was reacted to; a graph node always has), for
        the one store this updater writes: a user whose whole payload was produced before and has not been
        invalidated since gets a patch (``merge``) unless ``whole``.

        A node with at least one like edge carries its LightGCN vector and ``linked: true``. A node with
        reactions but no like edge (a user who only disliked so far, an item only disliked) still gets a point,
        so its history and counts reach the scorer: its payload says ``linked: false`` and its vector is a fixed
        pseudo-random one (:func:`unlinked_vector`; Qdrant's cosine needs a non-zero vector), which readers
        must not use as a graph position."""
        chosen = np.array(sorted(set(nodes)), dtype=np.int64)
        out = []
        for v, vector in zip(chosen.tolist(), self.graph.final(chosen).tolist(), strict=True):
            key = self.graph.keys[v]
            kind, external_id = split_node_key(key)
            merge = False
            if kind == USER:
                h = self.history(external_id)
                merge = h.new is not None and not whole
                payload = h.patch(self.recent_n) if merge else h.payload(external_id, self.recent_n)
            else:
                liked, disliked = self.item_reactions.get(external_id, (0, 0))
                payload = {"item_id": external_id, "n_liked": liked, "n_disliked": disliked}
            payload["linked"] = bool(self.graph.adj[v])
            out.append(VectorRecord(kind, external_id, vector if payload["linked"] else
                                    unlinked_vector(key, self.graph.dim), payload, merge))
        return out

    def all_records(self) -> list[VectorRecord]:
        """Whole records of every node: what a new or rebuilt store is filled with."""
        return self.records(range(len(self.graph)), whole=True)
