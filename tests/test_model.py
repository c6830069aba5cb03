"""The early-exit model on tiny locally built configs (no downloads): encoder (BERT) and decoder (Llama)."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

from scorer.exit_rules import ExitRule, MaxProbRule
from scorer.model import DECODER, ENCODER, EarlyExitModel


def tiny(kind: str) -> EarlyExitModel:
    torch.manual_seed(0)
    if kind == ENCODER:
        backbone = BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    else:
        backbone = LlamaModel(LlamaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64))
    model = EarlyExitModel(backbone, head_layers=[1, 2, 4]).eval()
    with torch.no_grad():  # spread the heads' outputs so that a threshold splits the batch
        for head in model.heads:
            head[1].weight.mul_(20)
    return model


def batch(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1, 120, (n,), generator=g)
        mask[r, :n] = 1
    return ids, mask


@pytest.mark.parametrize("kind", [ENCODER, DECODER])
def test_kind_detection_and_forward_shape(kind):
    model = tiny(kind)
    assert model.kind == kind
    ids, mask = batch([5, 9, 7])
    assert model(ids, mask).shape == (3, 3, 2)


@pytest.mark.parametrize("kind", [ENCODER, DECODER])
def test_shrinking_batch_gives_the_scores_of_running_each_sample_alone(kind):
    model = tiny(kind)
    ids, mask = batch([5, 9, 7, 12, 3, 8])
    probs_all = torch.softmax(model(ids, mask), -1)[..., 1].T.detach().numpy()
    threshold = float(np.median(np.maximum(probs_all[:, 0], 1 - probs_all[:, 0])))
    rule = MaxProbRule(threshold)
    together = model.predict(ids, mask, rule)
    assert 0 < (together.exit_head == 0).sum() < len(ids), "the rule must release some rows early, not all"
    for r in range(len(ids)):
        n = int(mask[r].sum())
        alone = model.predict(ids[r:r + 1, :n], mask[r:r + 1, :n], rule)
        assert alone.exit_head[0] == together.exit_head[r]
        np.testing.assert_allclose(alone.ctr[0], together.ctr[r], atol=1e-5)
        evaluated = ~np.isnan(together.probs[r])
        np.testing.assert_allclose(alone.probs[0][evaluated], together.probs[r][evaluated], atol=1e-5)
        assert np.isnan(together.probs[r][together.exit_head[r] + 1:]).all()  # no head after the exit ran


@pytest.mark.parametrize("kind", [ENCODER, DECODER])
def test_never_exiting_rule_scores_with_the_last_head(kind):
    model = tiny(kind)
    ids, mask = batch([4, 6])
    result = model.predict(ids, mask, ExitRule())
    full = torch.softmax(model(ids, mask), -1)[-1, :, 1].detach().numpy()
    np.testing.assert_allclose(result.ctr, full, atol=1e-5)
    assert result.exit_layer.tolist() == [4, 4]


def test_head_layers_are_validated():
    backbone = tiny(ENCODER).backbone
    for bad in ([], [0, 2], [2, 1], [1, 5]):
        with pytest.raises(ValueError):
            EarlyExitModel(backbone, bad)
