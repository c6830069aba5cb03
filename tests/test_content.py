"""Content match from the real MiniLM sentence encoder (shipped in the wheel): the math and the embedding cache."""

import numpy as np
import pytest

from scorer import backbones
from scorer.content import CONTENT_FEATURES, SentenceEncoder, TextEmbeddings, content_match
from scorer.features import ALL_FEATURES, FEATURES, feature_matrix
from scorer.prompt import PromptInputs


class CountingEncoder(SentenceEncoder):
    """The real encoder, counting the texts it is asked to embed."""

    def __init__(self, folder):
        super().__init__(folder)
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += texts
        return super().encode(texts)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    return TextEmbeddings(CountingEncoder(backbones.resolve("minilm", tmp_path_factory.mktemp("cache"))),
                          max_texts=6)


def test_content_match_reads_liked_and_disliked_history(embeddings):
    history = (("Toy Story (1995)", 1), ("Aladdin (1992)", 1), ("Schindler's List (1993)", 0))
    same = dict(zip(CONTENT_FEATURES, content_match(PromptInputs("Toy Story (1995)", history), embeddings),
                    strict=True))
    liked_mean = np.mean([embeddings["Toy Story (1995)"], embeddings["Aladdin (1992)"]], axis=0)
    assert same["liked_match"] == pytest.approx(float(embeddings["Toy Story (1995)"] @ liked_mean), abs=1e-6)
    assert same["disliked_match"] == pytest.approx(
        float(embeddings["Toy Story (1995)"] @ embeddings["Schindler's List (1993)"]), abs=1e-6)
    assert same["match_margin"] == pytest.approx(same["liked_match"] - same["disliked_match"])
    assert same["liked_match"] > same["disliked_match"]  # the candidate is one of the liked items
    assert (same["has_liked_history"], same["has_disliked_history"]) == (1.0, 1.0)
    cold = content_match(PromptInputs("Toy Story (1995)"), embeddings)
    assert cold == [0.0, 0.0, 0.0, 0.0, 0.0]


def test_each_text_is_embedded_once_and_the_cache_is_bounded(embeddings):
    encoder = embeddings.encoder
    encoder.seen.clear()
    inputs = [PromptInputs("Heat (1995)", (("Casino (1995)", 1),)),
              PromptInputs("Heat (1995)", (("Casino (1995)", 0),))]
    m = feature_matrix(inputs, 0.5, ALL_FEATURES, embeddings)
    assert m.shape == (2, len(ALL_FEATURES)) and m.dtype == np.float32
    assert sorted(encoder.seen) == ["Casino (1995)", "Heat (1995)"]  # one batch, each distinct text once
    feature_matrix(inputs, 0.5, ALL_FEATURES, embeddings)
    assert len(encoder.seen) == 2  # cached
    embeddings.ensure([f"title {k}" for k in range(10)])
    assert len(embeddings.vectors) == 6  # bounded: least recently used dropped
    np.testing.assert_allclose(m[:, :len(FEATURES)], feature_matrix(inputs, 0.5))  # the first columns unchanged
