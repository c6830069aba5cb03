"""Both vector-store backends answer the same calls the same way (real qdrant-client and qdrant-edge)."""

import copy
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from graph_updater.graph import ITEM, USER, LightGCNGraph
from graph_updater.online import (
    GraphUpdater,
    UserHistory,
    VectorRecord,
    item_key,
    latest_keys,
    merged_payload,
    payload_keys,
)
from graph_updater.store import EdgeStore, VectorStore, open_store, sweep_stale_stores
from infra.runtime.settings import REPO_ROOT
from schemas.messages import Click


@pytest.fixture(params=["qdrant", "edge"])
def store(request, tmp_path):
    s = open_store(request.param, path=":memory:" if request.param == "qdrant" else str(tmp_path / "edge"))
    s.ensure_collections(4)
    yield s
    s.close()


def user(uid: str, vec, liked=(), disliked=()) -> VectorRecord:
    history = UserHistory()
    for k, (item, label) in enumerate([(i, 1) for i in liked] + [(i, 0) for i in disliked]):
        history.record(f"{uid}-{k}", item, label, 900_000_000_000 + k)
    return VectorRecord(USER, uid, list(map(float, vec)), history.payload(uid, recent_n=20))


def test_upsert_get_count_and_overwrite(store):
    store.upsert([user("a", [1, 0, 0, 0], liked=["x"]), VectorRecord(ITEM, "x", [0, 2, 0, 0], {"item_id": "x"})])
    assert (store.count(USER), store.count(ITEM)) == (1, 1)
    vec, payload = store.get(ITEM, "x")
    np.testing.assert_allclose(vec, [0, 1, 0, 0], atol=1e-6)  # cosine collections store unit vectors
    store.upsert([user("a", [0, 0, 3, 0], disliked=["y"])])
    vec, payload = store.get(USER, "a")
    assert store.count(USER) == 1 and payload["disliked_keys"] == [item_key("y")] and payload["liked_keys"] == []
    assert json.loads(payload["recent"]) == [["y", 0, 900_000_000_000]]
    np.testing.assert_allclose(vec, [0, 0, 1, 0], atol=1e-6)
    assert store.get(USER, "nobody") is None


def test_temporary_edge_store_reads_its_writes_at_once_and_leaves_nothing():
    """A temporary store keeps payloads in memory and writes no write-ahead log: writes are read back at once
    (vector, payload, filtered search) and its folder is gone after close."""
    store = EdgeStore()
    store.ensure_collections(4)
    store.upsert([user("a", [1, 0, 0, 0], liked=["x"], disliked=["y"])])
    assert store.get(USER, "a")[1]["liked_keys"] == [item_key("x")]
    assert [n.user_id for n in store.similar_users([1.0, 0, 0, 0], interacted_with="y")] == ["a"]
    folder = store.folder
    store.close()
    assert not folder.exists()


def temporary_store_of_a_child(tmp_path, ending: str) -> list:
    """The temporary store folders a child process leaves under ``tmp_path`` after writing a point and ending
    with ``ending`` (Python statements)."""
    child = (
        "from graph_updater.graph import USER\n"
        "from graph_updater.online import VectorRecord\n"
        "from graph_updater.store import EdgeStore\n"
        "store = EdgeStore()\n"
        "store.ensure_collections(4)\n"
        "store.upsert([VectorRecord(USER, 'a', [1.0, 0.0, 0.0, 0.0], {'user_id': 'a'})])\n" + ending)
    subprocess.run([sys.executable, "-c", child], check=True, cwd=REPO_ROOT, timeout=120,
                   env={**os.environ, "TMPDIR": str(tmp_path)})
    return sorted(tmp_path.glob("exitrec-edge-*"))


def test_temporary_store_left_by_a_killed_process_is_removed_by_the_next_store(tmp_path, monkeypatch):
    """A process that ends without close(): on a normal exit its temporary store goes with it; killed (no
    cleanup runs), its folder stays until the next temporary store is opened on the machine, which removes the
    folders of ended processes and keeps those of live ones."""
    assert temporary_store_of_a_child(tmp_path, "import sys; sys.exit(0)\n") == []
    left = temporary_store_of_a_child(tmp_path, "import os; os._exit(0)\n")
    assert len(left) == 1 and (left[0] / "exitrec_users").is_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    alive = EdgeStore()
    try:
        assert not left[0].exists()
        assert alive.folder.parent == tmp_path and alive.folder.name.startswith(f"exitrec-edge-{os.getpid()}-")
        assert sweep_stale_stores(tmp_path) == 0 and alive.folder.exists()  # this process is alive
    finally:
        alive.close()


def test_edge_store_in_a_folder_keeps_its_writes_when_the_process_dies_without_closing(tmp_path):
    """A store in a folder outlives its process: points written by a process that exits without close or flush
    (as a SIGKILL leaves it) are found, with their payloads, when the folder is opened again."""
    path = tmp_path / "edge"
    writer = (
        "import os, sys\n"
        "from graph_updater.graph import USER\n"
        "from graph_updater.online import UserHistory, VectorRecord\n"
        "from graph_updater.store import EdgeStore\n"
        "h = UserHistory()\n"
        "h.record('e1', 'x', 1, 1)\n"
        "store = EdgeStore(sys.argv[1])\n"
        "store.ensure_collections(4)\n"
        "store.upsert([VectorRecord(USER, 'a', [1.0, 0.0, 0.0, 0.0], h.payload('a', recent_n=20))])\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True, cwd=REPO_ROOT, timeout=120)
    reopened = EdgeStore(path)
    reopened.ensure_collections(4)
    try:
        vec, payload = reopened.get(USER, "a")
        np.testing.assert_allclose(vec, [1, 0, 0, 0], atol=1e-6)
        assert payload["liked_keys"] == [item_key("x")]
        assert [n.user_id for n in reopened.similar_users([1.0, 0, 0, 0], interacted_with="x")] == ["a"]
    finally:
        reopened.close()


def test_similar_users_ranking_exclusion_and_item_filter(store):
    store.upsert([
        user("me", [1, 0, 0, 0], liked=["x"]),
        user("close", [0.9, 0.1, 0, 0], liked=["y"]),
        user("mid", [0.5, 0.5, 0, 0], disliked=["x"]),
        user("far", [0, 0, 1, 0], liked=["x"]),
    ])
    store.optimize()
    ranked = store.similar_users([1, 0, 0, 0], k=3, exclude_user="me")
    assert [n.user_id for n in ranked] == ["close", "mid", "far"]
    assert ranked[0].score > ranked[1].score > ranked[2].score
    reacted = store.similar_users([1, 0, 0, 0], k=5, exclude_user="me", interacted_with="x")
    assert [n.user_id for n in reacted] == ["mid", "far"]  # liked or disliked x, nearest first
    assert [n.reaction_to("x") for n in reacted] == [0, 1]
    assert ranked[0].reaction_to("x") is None
    assert store.neighbour_reactions([1, 0, 0, 0], "x", k=5, exclude_user="me") == [0, 1]
    assert store.neighbour_reactions([1, 0, 0, 0], "x", k=1, exclude_user="me") == [0]
    assert store.neighbour_reactions([1, 0, 0, 0], "x", k=5) == [1, 0, 1]
    assert store.neighbour_reactions([1, 0, 0, 0], "nobody-reacted", k=5) == []


def test_item_filter_sees_the_latest_100_reactions(store):
    """A filter hits a key anywhere in a user's key lists, but only among the latest 100 per polarity (older
    reactions leave the payload)."""
    store.upsert([user("many", [1, 0, 0, 0], liked=[f"m{k}" for k in range(150)], disliked=["d"]),
                  user("other", [0.9, 0.1, 0, 0], liked=["o"])])
    store.optimize()
    assert [n.user_id for n in store.similar_users([1, 0, 0, 0], k=5, interacted_with="m120")] == ["many"]
    assert [n.user_id for n in store.similar_users([1, 0, 0, 0], k=5, interacted_with="d")] == ["many"]
    assert store.similar_users([1, 0, 0, 0], k=5, interacted_with="m10") == []  # pushed out by 100 newer likes
    assert [store.neighbour_reactions([1, 0, 0, 0], i, k=5) for i in ("m120", "d", "m10")] == [[1], [0], []]
    (many,) = store.similar_users([1, 0, 0, 0], k=1)
    assert [many.reaction_to(i) for i in ("m149", "m50", "d", "m10", "o")] == [1, 1, 0, None, None]


def test_neighbour_reactions_read_without_payloads_equal_the_payload_reading(store):
    """The backend's own neighbour-reaction read (qdrant-edge: two payload-free queries) gives what reading the
    neighbours' whole payloads gives, on 300 random users, items and queries."""
    rng = np.random.default_rng(7)
    records = []
    for u in range(300):
        items = rng.choice(40, size=rng.integers(1, 12), replace=False)
        split = rng.integers(0, len(items) + 1)
        records.append(user(f"u{u}", rng.normal(size=4), liked=[f"i{i}" for i in items[:split]],
                            disliked=[f"i{i}" for i in items[split:]]))
    store.upsert(records)
    store.optimize()
    read = [(rng.normal(size=4).tolist(), f"i{rng.integers(0, 40)}", f"u{rng.integers(0, 300)}") for _ in range(60)]
    by_payload = [VectorStore.neighbour_reactions(store, v, item, 10, exclude_user=me) for v, item, me in read]
    assert [store.neighbour_reactions(v, item, 10, exclude_user=me) for v, item, me in read] == by_payload
    assert sum(map(len, by_payload)) > 300 and {r for rs in by_payload for r in rs} == {0, 1}


def test_patched_user_points_read_like_whole_ones(store):
    """An updater patches a user's stored point (appended keys, counts, recent) instead of rewriting its key
    lists; after every batch, each stored user reads as the whole payload would: the latest 100 keys per polarity
    (:func:`payload_keys`), counts, recent reactions; and the item filter finds what the payloads say. The clicks
    re-like, flip and overflow the 16 appended keys, and push past 100 likes, so every path is taken."""
    rng = np.random.default_rng(11)
    updater, kinds = GraphUpdater(LightGCNGraph(4, 1)), {"merge": 0, "whole": 0}
    for batch in range(60):
        clicks = [Click(event_id=f"e{batch}-{k}", user_id=f"u{rng.integers(0, 12)}", item_id=f"i{rng.integers(0, 400)}",
                        label=int(rng.random() < 0.7), ts=900_000_000_000 + batch * 100 + k) for k in range(60)]
        records = updater.apply(clicks)
        for r in records:
            if r.kind == USER:
                kinds["merge" if r.merge else "whole"] += 1
        store.upsert(records)
        for uid, h in updater.histories.items():
            _, stored = store.get(USER, uid)
            whole = copy.deepcopy(h).payload(uid, updater.recent_n)
            assert payload_keys(stored, 1) == latest_keys(h.liked)
            assert payload_keys(stored, 0) == latest_keys(h.disliked)
            assert merged_payload(stored) == {**whole, "linked": stored["linked"]}
    assert kinds["merge"] > 100 and kinds["whole"] > 30 and max(len(h.liked) for h in updater.histories.values()) > 100
    store.optimize()
    read = [(rng.normal(size=4).tolist(), f"i{rng.integers(0, 400)}") for _ in range(40)]
    by_payload = [VectorStore.neighbour_reactions(store, v, item, 5) for v, item in read]
    assert [store.neighbour_reactions(v, item, 5) for v, item in read] == by_payload and any(by_payload)
