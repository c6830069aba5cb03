"""A model trains on the prompts of the retriever it will be served with, and the scorer says when they differ."""

import functools

import numpy as np
import pytest
from structlog.testing import capture_logs

from graph_updater import checkpoint as graph_checkpoint
from graph_updater.store import EdgeStore, embedded_copy
from infra.runtime.settings import Settings
from scorer import backbones
from scorer.content import SentenceEncoder
from scorer.context import item_text
from scorer.retrievers import TextRetriever, index_most_active
from scorer.samples import build_samples_streaming
from scorer.service import load_scorer


def test_text_retriever_samples_carry_the_text_neighbours_reactions_before_the_row(ml100k, split,
                                                                                  trained_checkpoint, tmp_path):
    first = len(split.train)
    rows = np.arange(first + 100, first + 400, 10)

    def samples(with_text: bool):
        updater, _ = graph_checkpoint.load(trained_checkpoint)
        store, text_store = embedded_copy(updater), EdgeStore()
        retriever = None
        if with_text:
            retriever = TextRetriever(store, text_store, SentenceEncoder(backbones.resolve("minilm", tmp_path)),
                                      functools.partial(item_text, ml100k.item_text))
            assert index_most_active(retriever, updater.histories, 200, progress=False) == 200
        try:
            return build_samples_streaming(ml100k, first, rows, updater, store, ml100k.item_text, progress=False,
                                           retriever=retriever)
        finally:
            store.close()
            text_store.close()

    by_text, by_gcn = samples(True), samples(False)
    assert [s.label for s in by_text] == [s.label for s in by_gcn]
    for row, sample in zip(rows, by_text, strict=True):
        if sample.inputs.neighbours is None:
            continue
        # neighbours' reactions to the candidate come from other users, strictly before the row
        before = ml100k.users[:row][ml100k.items[:row] == sample.item_id]
        others = len(set(before) - {sample.user_id})
        assert sample.inputs.neighbours.liked + sample.inputs.neighbours.disliked <= min(others, 20), row
    # the same rows, other neighbours: the retriever the samples were built with is the one that searched
    assert [s.inputs.neighbours for s in by_text] != [s.inputs.neighbours for s in by_gcn]
    assert [s.inputs.rate for s in by_text] == [s.inputs.rate for s in by_gcn]  # the user's own payload is shared
    assert sum(s.inputs.neighbours is not None and s.inputs.neighbours.liked + s.inputs.neighbours.disliked > 0
               for s in by_text) > len(rows) / 4


@pytest.mark.parametrize(("serving", "warned"), [("none", True), ("gcn", False)])
def test_serving_with_another_retriever_than_the_model_trained_with_is_logged(tiny_scorer_checkpoint, tmp_path,
                                                                             serving, warned):
    store = EdgeStore()
    try:
        with capture_logs() as logs:
            scorer = load_scorer(Settings(scorer_checkpoint=tiny_scorer_checkpoint, retriever=serving,
                                          cache_dir=tmp_path), store)
    finally:
        store.close()
    found = [e for e in logs if e["event"] == "retriever_differs_from_training"]
    assert bool(found) == warned
    if warned:
        assert found[0]["trained_with"] == "gcn" and "--retriever none" in found[0]["fix"]
    assert scorer.contexts.options.n_neighbours == (0 if serving == "none" else Settings().neighbours)
