import json
import tracemalloc
from collections import deque

import numpy as np

from graph_updater import checkpoint
from graph_updater.datasets import Interactions
from graph_updater.graph import ITEM, USER
from graph_updater.train import run_refinement, train_offline
from schemas.messages import Click

TS = 900_000_000_000


def history() -> Interactions:
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}") for u in range(40) for i in range(25) if rng.random() < 0.2]
    users, items = zip(*rows, strict=True)
    return Interactions("toy", np.array(users, dtype=object), np.array(items, dtype=object),
                        np.ones(len(rows), dtype=np.int8), np.arange(len(rows), dtype=np.int64) + TS)


def click(event: str, user: str, item: str, label: int = 1) -> Click:
    return Click(event_id=event, user_id=user, item_id=item, label=label, ts=TS)


def test_checkpoint_round_trip_reloads_identical_vectors(tmp_path):
    hist = history()
    updater = checkpoint.build_updater(hist, dim=8, num_layers=2)
    train_offline(updater.graph, epochs=3, batch_size=64)
    checkpoint.save(tmp_path, updater, hist, {"dataset": "toy"})
    again, config = checkpoint.load(tmp_path)
    assert config["dataset"] == "toy" and again.graph.keys == updater.graph.keys
    np.testing.assert_array_equal(again.graph.final(), updater.graph.final())
    assert again.histories["u0"].liked == updater.histories["u0"].liked


def test_apply_is_idempotent_per_event_and_latest_reaction_wins():
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    updater.graph.propagate_full()
    first = updater.apply([click("e1", "new", "i1"), click("e2", "new", "i2")])
    assert {(r.kind, r.external_id) for r in first} >= {(USER, "new"), (ITEM, "i1"), (ITEM, "i2")}
    before = updater.graph.final().copy()
    assert updater.apply([click("e1", "new", "i1"), click("e2", "new", "i2")]) == []  # redelivered: no change
    np.testing.assert_array_equal(updater.graph.final(), before)
    updater.apply([click("e3", "new", "i1", label=0)])  # a later "not clicked" on i1 removes the edge
    h = updater.histories["new"]
    assert list(h.liked) == ["i2"] and list(h.disliked) == ["i1"]
    u, i1 = updater.graph.node(USER, "new"), updater.graph.node(ITEM, "i1")
    assert i1 not in updater.graph.adj[u]


def test_idempotency_window_is_each_users_recent_events_so_memory_does_not_grow_with_clicks():
    """Every event id used to be kept forever (RSS grew with the click count); now a user keeps its last
    ``recent_n`` events, which catch redeliveries, and nothing else per click."""
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2, recent_n=5)
    updater.graph.propagate_full()
    clicks = [click(f"w{k}", "busy", f"i{k % 25}", label=k % 2) for k in range(300)]
    updater.apply(clicks)
    busy = updater.histories["busy"]
    assert busy.recent_events == [f"w{k}" for k in range(295, 300)]
    assert len(busy.liked) + len(busy.disliked) == 25  # bounded by its items, not by its 300 clicks
    reactions = {item: list(counts) for item, counts in updater.item_reactions.items()}
    assert updater.apply(clicks[-5:]) == []  # redelivered inside the window: nothing changes
    assert updater.item_reactions == reactions
    more = [click(f"x{k}", "busy", f"i{k % 25}", label=k % 2) for k in range(3000)]
    updater.apply(more[:100])  # warm-up: first-time allocations of the batch path
    updater.recent_pairs = deque(updater.recent_pairs, maxlen=len(updater.recent_pairs))  # refinement's sample:
    # bounded on its own (``recent_edges``, 50,000 pairs), kept out of this count
    tracemalloc.start()
    for start in range(100, len(more), 100):
        updater.apply(more[start:start + 100])
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert grown < 50_000, f"{grown} bytes kept for 2,900 clicks on known edges"  # every id kept: ~140 KB


def test_the_window_gives_the_same_state_whichever_way_partitions_interleave():
    """Users' clicks are ordered within their partition, not across: a replay after a restart may interleave them
    differently, and must reach the same state (duplicates included)."""
    mine = [click(f"a{k}", "ua", f"i{k % 7}", label=int(k % 3 > 0)) for k in range(40)]
    theirs = [click(f"b{k}", "ub", f"i{k % 5}") for k in range(40)]
    mine, theirs = mine + mine[-3:] + mine[:2], theirs + theirs[-1:]  # redeliveries: recent and long past
    states = []
    for order in (mine + theirs, theirs + mine, [c for pair in zip(mine, theirs, strict=False) for c in pair]
                  + mine[len(theirs):]):
        updater = checkpoint.build_updater(history(), dim=8, num_layers=2, recent_n=4)
        updater.graph.propagate_full()
        for start in range(0, len(order), 7):
            updater.apply(order[start:start + 7])
        updater.graph.propagate_full()  # node numbering follows arrival order: compare vectors by key
        final = updater.graph.final()
        states.append(({u: (h.liked, h.disliked, list(h.recent), list(h.recent_events))
                        for u, h in updater.histories.items()},
                       updater.item_reactions, {key: final[v] for v, key in enumerate(updater.graph.keys)}))
    for other in states[1:]:
        assert other[0] == states[0][0] and other[1] == states[0][1] and other[2].keys() == states[0][2].keys()
        for key, vector in other[2].items():
            np.testing.assert_allclose(vector, states[0][2][key], atol=1e-5)


def test_a_checkpoint_build_keeps_a_quarter_of_headroom_and_still_grows():
    """The per-node arrays were sized for the worst case (two new nodes per history row): 3x the nodes."""
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    updater.graph.propagate_full()
    n, before = len(updater.graph), updater.graph.final().copy()
    assert updater.graph.layers.shape[1] == n * 5 // 4
    updater.apply([click(f"g{k}", f"newcomer{k}", f"fresh{k}") for k in range(n)])  # past the headroom
    assert len(updater.graph) == 3 * n and updater.graph.layers.shape[1] >= 3 * n
    old_users = [v for v, key in enumerate(updater.graph.keys[:n]) if updater.graph.adj[v]]
    np.testing.assert_array_equal(updater.graph.final()[old_users], before[old_users])


def test_user_with_only_negative_clicks_gets_an_unlinked_point_with_its_history():
    """Before: no point at all, so the scorer treated a user with five dislikes as brand new."""
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    updater.graph.propagate_full()
    records = {(r.kind, r.external_id): r for r in updater.apply([click("n1", "shy", "new-item", label=0)])}
    shy, item = records[(USER, "shy")], records[(ITEM, "new-item")]
    assert shy.payload["linked"] is False and shy.payload["n_disliked"] == 1 and shy.payload["n_liked"] == 0
    assert json.loads(shy.payload["recent"]) == [["new-item", 0, TS]]
    assert item.payload == {"item_id": "new-item", "n_liked": 0, "n_disliked": 1, "linked": False}
    assert np.linalg.norm(shy.vector) > 0  # a placeholder Qdrant's cosine accepts, stable across runs
    again = checkpoint.build_updater(history(), dim=8, num_layers=2).apply([click("n1", "shy", "new-item", label=0)])
    assert next(r.vector for r in again if r.external_id == "shy") == shy.vector
    liked = {r.external_id: r for r in updater.apply([click("n2", "shy", "i1")])}
    assert liked["shy"].payload["linked"] is True
    np.testing.assert_allclose(liked["shy"].vector, updater.graph.final(np.array([updater.graph.node(USER, "shy")]))[0],
                               rtol=1e-6)


def test_refine_moves_vectors_and_reports_them():
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    train_offline(updater.graph, epochs=2, batch_size=64)
    updater.apply([click(f"r{k}", f"u{k}", f"i{(k * 7) % 25}") for k in range(20)])
    job = updater.refine_job()
    moved = updater.merge_refined(job, run_refinement(job, steps=3, min_change=1e-3, lr=0.05, batch_size=64))
    assert moved and updater.clicks_since_refine == 0
    assert all(r.payload is None for r in moved)  # no reaction changed: vectors only
    for r in moved[:5]:
        v = updater.graph.node(r.kind, r.external_id)
        np.testing.assert_allclose(r.vector, updater.graph.final(np.array([v]))[0], rtol=1e-6)


def refining_updater():
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    train_offline(updater.graph, epochs=2, batch_size=64)
    updater.apply([click(f"r{k}", f"u{k}", f"i{(k * 7) % 25}") for k in range(20)])
    return updater


LATER = [[click("x1", "late", "i3"), click("x2", "u1", "brand-new")],  # a new user, a new item
         [click("x3", "u0", "i0", label=0), click("x4", "late", "i5"), click("x5", "u7", "i11")]]


def test_a_refinement_merged_after_later_clicks_equals_one_merged_before_them():
    """The click loop computes a refinement on a copy (RefineJob) in a thread while clicks go on; merging it after
    those clicks (two batches here) must leave the graph as merging it at the copy and then applying the same
    clicks in one batch would (a streaming refresh reads its neighbours' cached layers, so batch boundaries
    matter there already)."""
    at_copy, beside = refining_updater(), refining_updater()
    job = at_copy.refine_job()
    refined = run_refinement(job, steps=3, min_change=1e-3, lr=0.05, batch_size=64)
    assert refined.moved.any()
    at_copy.merge_refined(job, refined)
    at_copy.apply([c for batch in LATER for c in batch])

    job_beside = beside.refine_job()
    assert beside.clicks_since_refine == 0
    for batch in LATER:
        beside.apply(batch)
    moved = beside.merge_refined(job_beside, run_refinement(job_beside, steps=3, min_change=1e-3, lr=0.05,
                                                            batch_size=64))
    assert beside.graph.keys == at_copy.graph.keys
    n = len(beside.graph)
    np.testing.assert_array_equal(beside.graph.trained[:n], at_copy.graph.trained[:n])
    np.testing.assert_allclose(beside.graph.layers[:, :n], at_copy.graph.layers[:, :n], rtol=1e-5, atol=1e-6)
    assert beside.graph.node(ITEM, "i0") not in beside.graph.adj[beside.graph.node(USER, "u0")]
    written = {(r.kind, r.external_id) for r in moved}
    assert {(USER, "late"), (ITEM, "brand-new"), (USER, "u7")} <= written  # recomputed since the copy
    assert all(r.payload is None for r in moved)  # no reaction changed: vectors only
    for r in moved:
        v = beside.graph.node(r.kind, r.external_id)
        np.testing.assert_allclose(r.vector, beside.graph.final(np.array([v]))[0], rtol=1e-6)


def test_payload_keeps_the_latest_reactions_oldest_first():
    from graph_updater.online import PAYLOAD_MAX_ITEMS, UserHistory, item_key

    h = UserHistory()
    for k in range(PAYLOAD_MAX_ITEMS + 50):
        h.record(f"e{k}", f"i{k}", 1, TS + k)
    h.record("late", "i0", 0, TS + 999)  # i0 moves from liked to disliked
    payload = h.payload("u", recent_n=3)
    assert payload["liked_keys"] == [item_key(f"i{k}") for k in range(50, PAYLOAD_MAX_ITEMS + 50)]
    assert payload["disliked_keys"] == [item_key("i0")]
    assert (payload["n_liked"], payload["n_disliked"]) == (PAYLOAD_MAX_ITEMS + 49, 1)
    assert json.loads(payload["recent"])[-1] == ["i0", 0, TS + 999] and payload["last_ts"] == TS + 999


def test_recent_reactions_are_the_json_of_the_latest_events_whatever_the_item_ids_hold():
    """Each reaction is encoded once when recorded; the payload's text must be what json.dumps writes."""
    from graph_updater.online import UserHistory

    h = UserHistory(window=4)
    ids = ['plain', 'quote"d', "back\\slash", "caf\u00e9 \u2013 \U0001F600", "tab\there", "line\nbreak"]
    for k, item in enumerate(ids):
        h.record(f"e{k}", item, k % 2, TS + k)
        payload = h.payload("u", recent_n=3)
        expected = [[i, j % 2, TS + j] for j, i in enumerate(ids[: k + 1])][-3:]
        assert payload["recent"] == json.dumps(expected, separators=(",", ":"))
        assert json.loads(payload["recent"]) == expected and payload["last_ts"] == TS + k


def test_payload_key_lists_kept_up_to_date_equal_the_ones_computed_from_the_reactions():
    """The key lists follow each reaction instead of being rebuilt from up to 100 items per payload."""
    from graph_updater.online import PAYLOAD_MAX_ITEMS, UserHistory, latest_keys

    rng = np.random.default_rng(3)
    h = UserHistory()
    for k in range(3000):  # new items, re-likes, flips between liked and disliked; payloads read in between
        h.record(f"e{k}", f"i{int(rng.integers(0, 2 * PAYLOAD_MAX_ITEMS))}", int(rng.random() < 0.7), TS + k)
        if k % 7 == 0:
            payload = h.payload("u", recent_n=5)
            assert payload["liked_keys"] == latest_keys(h.liked)
            assert payload["disliked_keys"] == latest_keys(h.disliked)


def test_epoch_selection_keeps_the_embeddings_of_the_best_validation_score():
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    scores, snapshots = iter([0.1, 0.5, 0.3, 0.2]), []

    def validate(graph) -> float:
        snapshots.append(graph.final().copy())
        return next(scores)

    train_offline(updater.graph, epochs=4, batch_size=64, validate=validate)
    assert len(snapshots) == 4  # after every epoch
    np.testing.assert_array_equal(updater.graph.final(), snapshots[1])
    assert not np.allclose(snapshots[1], snapshots[3])
