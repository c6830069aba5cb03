"""Partitioned updaters' pure core: two shards exchanging forwards and layers equal one process's state."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from graph_updater import checkpoint
from graph_updater.events import clicks_of
from graph_updater.graph import ITEM, USER
from graph_updater.online import merged_payload
from graph_updater.shard import ShardUpdater, decode_layers, encode_layers, partition_of

PARTITIONS = 4


def whole_updater(split):
    updater = checkpoint.build_updater(split.train, dim=16, num_layers=2)
    rng = np.random.default_rng(7)
    updater.graph.set_base(rng.normal(0, 0.1, (len(updater.graph), 16)).astype(np.float32))
    updater.graph.propagate_full()
    return updater


def arrays_of(updater, split) -> checkpoint.CheckpointArrays:
    """The arrays a checkpoint of ``updater`` (built from ``split.train``) reads back as."""
    g = updater.graph
    return checkpoint.CheckpointArrays.of(split.train, g.keys, g.base(), g.trained[: len(g)], g.num_layers)


def run_both(split, n: int, batch: int = 250):
    """The first ``n`` stream clicks through one process and through two shards (partitions 0,1 and 2,3 of both
    topics); each round every shard takes its users' clicks and the forwards of the round before, then adopts
    the layers the other published."""
    one = whole_updater(split)
    arrays = arrays_of(one, split)
    shards = [ShardUpdater(arrays, {0, 1}, {0, 1}, PARTITIONS), ShardUpdater(arrays, {2, 3}, {2, 3}, PARTITIONS)]
    clicks = clicks_of(split.stream.take(slice(0, n)), first_row=len(split.train))
    pending: list[list] = [[], []]
    rounds = [clicks[s:s + batch] for s in range(0, n, batch)] + [[]]  # a last round delivers the last forwards
    for chunk in rounds:
        one.apply(chunk)
        published, forwarded = {}, [[], []]
        for k, shard in enumerate(shards):
            forwards, _, layers = shard.step([c for c in chunk if shard.owns(USER, c.user_id)], pending[k])
            published.update(layers)
            for f in forwards:
                forwarded[0 if shards[0].owns(ITEM, f.item_id) else 1].append(f)
        for shard in shards:
            shard.adopt(published.items())
        pending = forwarded
    return one, shards


def owner(shards, kind: str, external_id: str):
    (found,) = [s for s in shards if s.owns(kind, external_id)]
    return found


def test_partition_of_is_the_producers_default_partitioner():
    partitioner = DefaultPartitioner()
    for key in ["196", "u-1", "item:42", "x" * 40]:
        assert partition_of(key, 7) == partitioner(key.encode(), list(range(7)), list(range(7)))


def test_a_share_from_the_checkpoint_arrays_is_the_whole_checkpoint_pruned(split):
    """What a rebuild starts from: the owned nodes' histories, counts and adjacency as the whole checkpoint's
    one-pass build holds them, every node's degree, trained flag and layers bit for bit."""
    whole = whole_updater(split)
    arrays = arrays_of(whole, split)
    g = whole.graph
    n = len(g)
    for users, items in (({0, 1}, {2}), ({3}, {0, 1, 3})):
        shard = ShardUpdater(arrays, users, items, PARTITIONS)
        assert shard.graph.keys == g.keys
        np.testing.assert_array_equal(shard.graph.deg[:n], g.deg[:n])
        np.testing.assert_array_equal(shard.graph.trained[:n], g.trained[:n])
        np.testing.assert_array_equal(shard.graph.layers[:, :n], g.layers[:, :n])
        mine = [shard.owns(*key.split(":", 1)) for key in g.keys]
        assert 0 < sum(mine) < n
        for v, owned in enumerate(mine):
            assert shard.graph.adj[v] == (g.adj[v] if owned else set()), g.keys[v]
        expected = {u: h for u, h in whole.histories.items() if shard.owns(USER, u)}
        assert shard.histories.keys() == expected.keys()
        for user, h in expected.items():
            mine_h = shard.histories[user]
            assert (mine_h.liked, mine_h.disliked, mine_h.recent, mine_h.recent_events) == \
                (h.liked, h.disliked, h.recent, h.recent_events), user
            assert list(mine_h.liked) == list(h.liked), "reaction order (the payload's latest keys) kept"
        assert shard.item_reactions == {i: c for i, c in whole.item_reactions.items() if shard.owns(ITEM, i)}


def test_arrays_of_a_history_keep_the_latest_reaction_per_pair():
    from graph_updater.datasets import Interactions

    users = np.array(["a", "a", "b", "a", "b"], dtype=object)
    items = np.array(["x", "y", "x", "x", "y"], dtype=object)
    history = Interactions("h", users, items, np.array([1, 1, 0, 0, 1], np.int8), np.arange(5, dtype=np.int64))
    keys = ["u:a", "i:x", "i:y", "u:b"]
    arrays = checkpoint.CheckpointArrays.of(history, keys, np.zeros((4, 2), np.float32), True, 1)
    # a-x liked then disliked: gone; a-y liked; b-x disliked; b-y liked
    assert sorted(map(tuple, arrays.edges.T.tolist())) == [(0, 2), (3, 2)]
    with pytest.raises(ValueError, match="no embedding"):
        checkpoint.CheckpointArrays.of(history, keys[:3], np.zeros((3, 2), np.float32), True, 1)


def test_layers_round_trip_and_a_wrong_size_is_refused():
    layers = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)
    degree, trained, back = decode_layers(encode_layers(5.0, True, layers), 2, 16)
    assert (degree, trained) == (5.0, True)
    np.testing.assert_array_equal(back, layers)
    with pytest.raises(ValueError, match="expected"):
        decode_layers(encode_layers(5.0, True, layers), 3, 16)


def test_two_shards_hold_one_process_state_and_close_vectors(split):
    one, shards = run_both(split, 3000)
    assert set(shards[0].histories).isdisjoint(shards[1].histories)
    assert set(shards[0].histories) | set(shards[1].histories) == set(one.histories)
    assert set(shards[0].item_reactions) | set(shards[1].item_reactions) == set(one.item_reactions)
    for user, h in one.histories.items():
        mine = owner(shards, USER, user).histories[user]
        assert (mine.liked, mine.disliked, mine.recent, mine.recent_events) == \
            (h.liked, h.disliked, h.recent, h.recent_events), user
    expected = {(r.kind, r.external_id): r for r in one.all_records()}
    got = {}
    for shard in shards:
        got.update({(r.kind, r.external_id): r for r in shard.records(shard.owned_nodes(), whole=True)})
    assert got.keys() == expected.keys()
    cos = []
    for key, record in expected.items():
        mine = got[key]
        payload = merged_payload(mine.payload) if key[0] == USER else mine.payload
        assert payload == (merged_payload(record.payload) if key[0] == USER else record.payload), key
        if record.payload["linked"]:
            a, b = np.asarray(mine.vector), np.asarray(record.vector)
            cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    for shard in shards:  # every shard holds the other owner's latest layers and degrees of the nodes it knows
        for key, v in shard.graph.index.items():
            if not shard.owns(*key.split(":", 1)):
                source = owner(shards, *key.split(":", 1)).graph
                w = source.index[key]
                assert shard.graph.deg[v] == source.deg[w], key
                np.testing.assert_array_equal(shard.graph.layers[:2, v], source.layers[:2, w], err_msg=key)
    cos = np.asarray(cos)
    print(f"shards vs one process: mean cosine {cos.mean():.4f}, 1st percentile {np.percentile(cos, 1):.4f}")
    assert cos.mean() >= 0.99 and np.percentile(cos, 1) >= 0.9


def test_a_shard_keeps_its_own_layers_over_published_ones(split):
    shard = ShardUpdater(arrays_of(whole_updater(split), split), {0, 1}, {0, 1}, PARTITIONS)
    g = shard.graph
    mine = next(k for k in g.keys if shard.owns(*k.split(":", 1)))
    other = next(k for k in g.keys if not shard.owns(*k.split(":", 1)))
    before = g.layers[:, g.index[mine]].copy()
    fake = encode_layers(99.0, True, np.ones((g.num_layers, g.dim), dtype=np.float32))
    assert shard.adopt([(mine, fake), (other, fake)]) == 1
    np.testing.assert_array_equal(g.layers[:, g.index[mine]], before)
    assert g.deg[g.index[other]] == 99.0 and (g.layers[: g.num_layers, g.index[other]] == 1).all()
    assert not g.adj[g.index[other]], "another owner's adjacency is not kept"


def test_a_cold_deployment_share_starts_empty_and_takes_clicks():
    """No checkpoint (``initial_arrays`` without a graph checkpoint): the share has no node until clicks come."""
    from schemas.messages import Click

    shard = ShardUpdater(checkpoint.CheckpointArrays.empty(8, 2), range(PARTITIONS), range(PARTITIONS), PARTITIONS)
    assert len(shard.graph) == 0 and not shard.histories
    clicks = [Click(event_id=f"e{k}", user_id=f"u{k % 3}", item_id=f"i{k % 5}", label=k % 2,
                    ts=1_600_000_000_000 + k) for k in range(20)]
    forwards, records, _ = shard.step(clicks, [])
    assert len(forwards) == 20 and {r.external_id for r in records} == {"u0", "u1", "u2"}
    _, records, _ = shard.step([], forwards)
    assert {r.external_id for r in records} == {f"i{k}" for k in range(5)}
    assert {i: tuple(c) for i, c in shard.item_reactions.items()} == {
        f"i{k}": (sum(1 for j in range(20) if j % 5 == k and j % 2 == 1),
                  sum(1 for j in range(20) if j % 5 == k and j % 2 == 0)) for k in range(5)}
