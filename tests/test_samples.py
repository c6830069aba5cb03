"""Training samples are built by the scorer's own retrieval on a replayed stream, prequentially."""

from dataclasses import replace

import numpy as np
import pytest

from graph_updater import checkpoint as graph_checkpoint
from graph_updater.events import clicks_of
from graph_updater.store import embedded_copy
from schemas.messages import ImpressionRequest
from scorer.catalogue import LiveCatalogue
from scorer.retrievers import GcnRetriever
from scorer.samples import build_samples, build_samples_streaming
from scorer.scoring import ContextBuilder, ScorerOptions


def fresh_state(checkpoint_dir):
    updater, _ = graph_checkpoint.load(checkpoint_dir)
    return updater, embedded_copy(updater)


def streamed(data, first: int, rows, checkpoint_dir):
    """Streaming samples of ``rows`` from a fresh copy of the checkpoint's state."""
    updater, store = fresh_state(checkpoint_dir)
    try:
        return build_samples_streaming(data, first, rows, updater, store, LiveCatalogue.of(data), progress=False)
    finally:
        store.close()


def test_streaming_samples_match_the_serving_context_and_never_see_their_own_click(ml100k, split,
                                                                                 trained_checkpoint):
    first = len(split.train)
    rows = np.arange(first + 50, first + 250, 5)
    samples = streamed(ml100k, first, rows, trained_checkpoint)

    # the rate line counts the user's reactions strictly before the row (latest reaction per distinct item), likes
    # or not; a user without a like yet has no LightGCN vector, hence no neighbours
    dislikers = 0
    for row, sample in zip(rows, samples, strict=True):
        before = {}
        for t in np.flatnonzero(ml100k.users[:row] == sample.user_id):
            before[ml100k.items[t]] = int(ml100k.labels[t])
        assert sample.inputs.rate == ((sum(before.values()), len(before)) if before else None), row
        if before and not sum(before.values()):
            dislikers += 1
            assert sample.inputs.neighbours is None and sample.inputs.affinity is None, row
        assert sample.label == int(ml100k.labels[row]) and sample.item_id == ml100k.items[row]
    assert dislikers > 0  # the slice holds users whose only reactions so far are dislikes
    assert sum(s.inputs.neighbours is not None for s in samples) > len(samples) / 2

    # item evidence: the candidate's reactions strictly before the row, for every row (cold users included)
    for row, sample in zip(rows, samples, strict=True):
        earlier = ml100k.labels[:row][ml100k.items[:row] == sample.item_id]
        assert sample.inputs.item_rate == (int(earlier.sum()), len(earlier)), row

    # the sample of the last row is what the online scorer builds from the same clicks (vector cosines up to float
    # rounding: the incremental refresh sums the same terms in another order when batch boundaries differ)
    last = int(rows[-1])
    updater, store = fresh_state(trained_checkpoint)
    store.upsert(updater.apply(clicks_of(ml100k.take(slice(first, last)), first_row=first)))
    builder = ContextBuilder(GcnRetriever(store), ml100k.item_text, ScorerOptions(retrieval_budget_ms=1e9))
    request = ImpressionRequest(request_id="r", user_id=samples[-1].user_id, item_ids=[samples[-1].item_id],
                                ts=int(ml100k.ts[last]))
    served = builder.context(request, 0.0, 0.0).inputs[0]
    assert replace(served, affinity=None, graph_match=None) == replace(samples[-1].inputs, affinity=None,
                                                                        graph_match=None)
    assert served.affinity == pytest.approx(samples[-1].inputs.affinity, abs=1e-5)
    assert served.graph_match == pytest.approx(samples[-1].inputs.graph_match, abs=1e-5)
    store.close()


def test_the_static_ablation_reads_the_same_like_surprise_terms_as_the_serving_context(ml100k, split,
                                                                                      trained_checkpoint):
    first = len(split.train)
    rows = np.arange(first + 10, first + 400, 13)
    served = streamed(ml100k, first, rows, trained_checkpoint)
    static = build_samples(ml100k, rows, lambda kind, external_id: None)
    assert sum(s.inputs.surprise is not None for s in served) > len(rows) / 2
    for a, b in zip(served, static, strict=True):
        assert a.inputs.surprise == b.inputs.surprise


def test_the_brand_counts_of_serving_and_of_the_static_ablation_agree(ml100k, split, trained_checkpoint):
    """MovieLens names no brand: one per release year stands in (real rows, the year as the "maker")."""
    data = replace(ml100k, item_brand={i: text.rsplit("(", 2)[-2].strip(" )")[-4:]
                                       for i, text in ml100k.item_text.items() if "(" in text})
    first = len(split.train)
    rows = np.arange(first + 10, first + 400, 13)
    served = streamed(data, first, rows, trained_checkpoint)
    static = build_samples(data, rows, lambda kind, external_id: None)
    assert sum(s.inputs.brand_rate is not None and s.inputs.brand_rate[1] > 0 for s in served) > len(rows) / 2
    assert [s.inputs.brand_rate for s in served] == [s.inputs.brand_rate for s in static]


def test_first_impressions_are_the_rows_where_a_user_appears_for_the_first_time():
    from scorer.experiment import first_impressions

    users = np.array(["a", "b", "a", "c", "b", "d", "c", "e"])
    np.testing.assert_array_equal(first_impressions(users, 0), [0, 1, 3, 5, 7])
    np.testing.assert_array_equal(first_impressions(users, 4), [5, 7])  # b and c appeared before position 4
