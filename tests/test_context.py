"""The scorer's retrieval step on the real embedded Qdrant engine: what each candidate's prompt and features know,
and which degraded flag says what was missing (cold users, unknown items, deadlines, budgets, a failing store)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from graph_updater import checkpoint as graph_checkpoint
from graph_updater.graph import ITEM, USER
from graph_updater.store import embedded_copy
from schemas.messages import DegradedFlag, ImpressionRequest
from scorer.context import graph_match, others_counts, recent_reactions
from scorer.features import FEATURES, features, graph_pairs
from scorer.retrievers import GcnRetriever
from scorer.scoring import ContextBuilder, ScorerOptions


@pytest.fixture(scope="module")
def state(trained_checkpoint):
    updater, _ = graph_checkpoint.load(trained_checkpoint)
    store = embedded_copy(updater)
    yield updater, store
    store.close()


def builder(store, budget_ms: float = 1e9) -> ContextBuilder:
    return ContextBuilder(GcnRetriever(store), {}, ScorerOptions(retrieval_budget_ms=budget_ms))


def known_pair(updater) -> tuple[str, str]:
    user = next(u for u, h in updater.histories.items() if len(h.liked) > 3)
    item = max(updater.item_reactions, key=lambda i: sum(updater.item_reactions[i]))
    return user, item


def fail_item_reads(store, monkeypatch) -> None:
    """Every item read of ``store`` raises (an items shard unreachable); user reads still work."""
    real_get = store.get

    def items_unreachable(kind, external_id):
        if kind == ITEM:
            raise ConnectionError("items shard unreachable")
        return real_get(kind, external_id)

    monkeypatch.setattr(store, "get", items_unreachable)


def request(user: str, items: list[str], **extra) -> ImpressionRequest:
    return ImpressionRequest(request_id="r", user_id=user, item_ids=items, ts=int(time.time() * 1000), **extra)


def test_a_cold_user_still_gets_the_candidates_rate_and_a_warm_one_also_its_affinity(state):
    updater, store = state
    user, item = known_pair(updater)
    liked, disliked = updater.item_reactions[item]
    cold = builder(store).context(request("never-seen", [item]), 0.0, time.time() * 1000)
    assert cold.degraded == {DegradedFlag.COLD_USER}
    assert cold.inputs[0].item_rate == (liked, liked + disliked) and cold.inputs[0].affinity is None
    assert cold.inputs[0].neighbours is None and cold.inputs[0].rate is None
    warm = builder(store).context(request(user, [item, "never-seen-item"]), 0.0, time.time() * 1000)
    assert warm.degraded == {DegradedFlag.COLD_ITEM}
    known, unknown = warm.inputs
    (user_vector, _), (item_vector, _) = store.get(USER, user), store.get(ITEM, item)
    cos = np.dot(user_vector, item_vector) / (np.linalg.norm(user_vector) * np.linalg.norm(item_vector))
    assert known.item_rate == (liked, liked + disliked) and known.affinity == pytest.approx(cos, abs=1e-6)
    assert known.neighbours is not None and known.rate[1] > 0
    assert unknown.item_rate == (0, 0) and unknown.affinity is None and unknown.neighbours.reacted == 0
    named = dict(zip(FEATURES, features(known, 0.55), strict=True))
    assert named["has_affinity"] == 1.0 and named["item_count"] > 0


def test_a_graph_token_reads_the_pairs_fresh_vectors_and_zeros_where_the_store_gave_none(state, monkeypatch):
    """The context carries the user's and the candidate's LightGCN vectors as the store holds them; a graph-token
    model reads them unit-scaled, and zeros for what is missing: an unknown item, a cold user, or an item read
    that failed (the request is still scored, flagged)."""
    updater, store = state
    user, item = known_pair(updater)
    (user_vector, _), (item_vector, _) = store.get(USER, user), store.get(ITEM, item)
    dim = len(user_vector)
    warm = builder(store).context(request(user, [item, "never-seen-item"]), 0.0, time.time() * 1000)
    pairs = graph_pairs(warm.inputs, dim)
    np.testing.assert_allclose(pairs[0], np.concatenate([user_vector / np.linalg.norm(user_vector),
                                                         item_vector / np.linalg.norm(item_vector)]), atol=1e-6)
    np.testing.assert_allclose(pairs[1, :dim], pairs[0, :dim])
    assert not pairs[1, dim:].any()
    cold = builder(store).context(request("never-seen", [item]), 0.0, time.time() * 1000)
    assert not graph_pairs(cold.inputs, dim)[0, :dim].any() and graph_pairs(cold.inputs, dim)[0, dim:].any()
    fail_item_reads(store, monkeypatch)
    failed = builder(store).context(request(user, [item]), 0.0, time.time() * 1000)
    assert failed.degraded == {DegradedFlag.NO_RETRIEVAL}
    assert graph_pairs(failed.inputs, dim)[0, :dim].any() and not graph_pairs(failed.inputs, dim)[0, dim:].any()


def test_deadlines_in_the_future_short_and_past(state):
    updater, store = state
    user, item = known_pair(updater)
    now = time.time() * 1000
    roomy = builder(store).context(request(user, [item], deadline_ms=60_000), 0.0, now)
    assert roomy.degraded == set() and roomy.inputs[0].neighbours is not None
    # a deadline shorter than the retrieval budget cuts retrieval: scored from what was read, flagged
    req = request(user, [item, item + "0"], deadline_ms=1)
    short = builder(store).context(req, 0.0, req.ts + 0.999)
    assert DegradedFlag.NO_RETRIEVAL in short.degraded and short.inputs[0].item_rate is None
    past = builder(store).context(request(user, [item], deadline_ms=5), 0.0, now + 10_000)
    assert past.degraded == {DegradedFlag.DEADLINE} and past.inputs[0].rate is None


def test_slo_mode_sheds_the_retrieval_of_a_request_that_waited_half_its_slo(state):
    """SLO 100 ms: a request taken 40 ms after it was produced gets everything; one taken 60 ms after keeps the
    user's and the candidate's own evidence and is flagged ``slo``, without neighbour or recent-reaction reads."""
    updater, store = state
    user, item = known_pair(updater)
    slo = ContextBuilder(GcnRetriever(store), {}, ScorerOptions(retrieval_budget_ms=1e9, latency_slo_ms=100.0))
    now = time.time() * 1000
    fresh, late = (slo.context(request(user, [item]), now - waited, now) for waited in (40.0, 60.0))
    full = builder(store).context(request(user, [item]), now - 60.0, now)
    assert fresh.degraded == full.degraded == set() and fresh.inputs == full.inputs
    assert late.degraded == {DegradedFlag.SLO} and late.neighbours_used == 0
    cheap, whole = late.inputs[0], full.inputs[0]
    assert (cheap.rate, cheap.item_rate, cheap.affinity, cheap.history) == (whole.rate, whole.item_rate,
                                                                            whole.affinity, whole.history)
    assert whole.neighbours.reacted > 0 and whole.surprise and whole.graph_match[0] is not None
    assert cheap.neighbours is None and cheap.surprise is None and cheap.graph_match == (None, None)


def test_retrieval_running_out_of_its_own_budget(state):
    updater, store = state
    user, _ = known_pair(updater)
    items = list(updater.item_reactions)[:40]
    ctx = builder(store, budget_ms=0.0).context(request(user, items), 0.0, time.time() * 1000)
    assert DegradedFlag.NO_RETRIEVAL in ctx.degraded
    assert all(x.neighbours is None and x.item_rate is None for x in ctx.inputs)
    assert all(x.rate == ctx.inputs[0].rate and x.rate[1] > 0 for x in ctx.inputs)  # the user's own payload stays


def test_a_store_failing_on_item_reads_scores_without_them(state, monkeypatch):
    updater, store = state
    user, item = known_pair(updater)
    fail_item_reads(store, monkeypatch)
    ctx = builder(store).context(request(user, [item]), 0.0, time.time() * 1000)
    assert ctx.degraded == {DegradedFlag.NO_RETRIEVAL}
    assert ctx.inputs[0].item_rate is None and ctx.inputs[0].neighbours is None and ctx.inputs[0].rate[1] > 0


def test_collaborative_match_compares_the_candidate_with_the_users_recent_likes_and_dislikes(state):
    updater, store = state
    user, item = known_pair(updater)
    ctx = builder(store).context(request(user, [item]), 0.0, time.time() * 1000)
    inputs = ctx.inputs[0]
    payload = store.get(USER, user)[1]
    reactions = recent_reactions(payload)
    candidate = np.asarray(store.get(ITEM, item)[0])
    candidate = candidate / np.linalg.norm(candidate)

    def mean_cos(label: int) -> float | None:
        vs = [np.asarray(found[0]) for i, y in reactions.items() if y == label
              and (found := store.get(ITEM, i)) is not None and found[1].get("linked", True)]
        return float(np.mean([v @ candidate / np.linalg.norm(v) for v in vs])) if vs else None

    liked, disliked = inputs.graph_match
    assert liked == pytest.approx(mean_cos(1), abs=1e-6)
    assert (disliked is None and mean_cos(0) is None) or disliked == pytest.approx(mean_cos(0), abs=1e-6)
    own_out = []
    for i, y in reactions.items():
        found = store.get(ITEM, i)
        if found is not None:
            n_liked, n_disliked = found[1]["n_liked"], found[1]["n_disliked"]
            own_out.append((y, n_liked - y, n_liked + n_disliked - 1))
    assert inputs.surprise == tuple(own_out) and len(own_out) > 3
    cold = builder(store).context(request("never-seen", [item]), 0.0, time.time() * 1000).inputs[0]
    assert cold.graph_match == (None, None) and cold.surprise is None


def test_recent_reactions_keep_the_latest_label_per_item_and_the_users_own_reaction_leaves_the_counts():
    payload = {"recent": '[["a",1,1],["b",0,2],["a",0,3]]', "n_liked": 1}
    assert recent_reactions(payload) == {"a": 0, "b": 0}
    assert others_counts(1, 4, 6) == (1, 3, 5)
    assert others_counts(0, 4, 6) == (0, 4, 5)
    assert graph_match(None, np.eye(2), np.eye(2)) is None
    assert graph_match([2.0, 0.0], np.eye(2)[:1], np.zeros((0, 0))) == (pytest.approx(1.0), None)
