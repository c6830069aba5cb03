import json

import numpy as np

from graph_updater import checkpoint
from graph_updater.datasets import Interactions
from graph_updater.graph import ITEM, USER
from graph_updater.train import train_offline
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
    moved = updater.refine(steps=3, lr=0.05, batch_size=64)
    assert moved and updater.clicks_since_refine == 0
    for r in moved[:5]:
        v = updater.graph.node(r.kind, r.external_id)
        np.testing.assert_allclose(r.vector, updater.graph.final(np.array([v]))[0], rtol=1e-6)


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
