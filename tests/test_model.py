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
            head.linear.weight.mul_(20)
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


def with_features(kind: str = ENCODER) -> EarlyExitModel:
    """The tiny backbone with a layer-0 head and 3 numeric features read by every head."""
    torch.manual_seed(0)
    model = EarlyExitModel(tiny(kind).backbone, head_layers=[0, 1, 2, 4], n_features=3).eval()
    with torch.no_grad():
        for head in model.heads:
            head.linear.weight.mul_(20)
    return model


def test_layer0_head_reads_only_features_and_released_rows_never_enter_a_block():
    model = with_features()
    ids, mask = batch([5, 9, 7, 12, 3, 8])
    features = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    probs0 = torch.softmax(model(ids, mask, features)[0], -1)[:, 1].detach().numpy()
    other_ids, _ = batch([5, 9, 7, 12, 3, 8], seed=7)  # different text, same features: head 0 does not change
    np.testing.assert_allclose(torch.softmax(model(other_ids, mask, features)[0], -1)[:, 1].detach().numpy(), probs0,
                               atol=1e-6)
    rule = MaxProbRule(float(np.median(np.maximum(probs0, 1 - probs0))))
    rows_in_block0 = []
    hook = model.blocks[0].register_forward_hook(lambda m, args, out: rows_in_block0.append(args[0].shape[0]))
    result = model.predict(ids, mask, rule, features)
    hook.remove()
    released = int((result.exit_head == 0).sum())
    assert 0 < released < 6
    assert rows_in_block0 == [6 - released], "rows that exit at layer 0 must not run any transformer block"
    assert (result.exit_layer[result.exit_head == 0] == 0).all()
    for r in range(6):  # and every row still scores as if alone
        n = int(mask[r].sum())
        alone = model.predict(ids[r:r + 1, :n], mask[r:r + 1, :n], rule, features[r:r + 1])
        assert alone.exit_head[0] == result.exit_head[r]
        np.testing.assert_allclose(alone.ctr[0], result.ctr[r], atol=1e-5)


def test_predict_applies_each_heads_calibration_before_the_rule():
    from scorer.calibration import HeadCalibration

    model = with_features()
    ids, mask = batch([5, 9, 7])
    features = torch.randn(3, 3, generator=torch.Generator().manual_seed(4))
    raw = model.predict(ids, mask, ExitRule(), features)
    model.calibration = HeadCalibration(((1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.5, 1.0)))
    calibrated = model.predict(ids, mask, ExitRule(), features)
    logit = np.log(raw.ctr / (1 - raw.ctr))
    np.testing.assert_allclose(calibrated.ctr, 1 / (1 + np.exp(-(0.5 * logit + 1.0))), atol=1e-6)
    np.testing.assert_allclose(calibrated.probs[:, :3], raw.probs[:, :3], atol=1e-7)


def test_feature_count_is_checked():
    model = with_features()
    ids, mask = batch([4, 6])
    with pytest.raises(ValueError, match="3 features"):
        model.predict(ids, mask, ExitRule(), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="n_features"):
        EarlyExitModel(model.backbone, [0, 1])


def quantized_linears(model) -> tuple[int, int]:
    """(dynamic int8 Linear layers, float Linear layers) of the backbone."""
    mods = list(model.backbone.modules())
    dynamic = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in mods)
    return dynamic, sum(type(m) is torch.nn.Linear for m in mods)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_lower_precision_checkpoint_loads_so_scores_close_to_fp32_and_says_so(tiny_scorer_checkpoint, tmp_path,
                                                                                precision):
    import json
    import shutil

    from scorer import checkpoint
    from scorer.features import FEATURES

    folder = tmp_path / precision
    shutil.copytree(tiny_scorer_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "precision": precision}))
    fp32, tokenizer, card32, _ = checkpoint.load(tiny_scorer_checkpoint, tmp_path)
    low, _, card_low, _ = checkpoint.load(folder, tmp_path)
    if precision == "bf16":
        assert next(low.backbone.parameters()).dtype == torch.bfloat16
    else:  # every Linear layer of the backbone runs int8 kernels, the embeddings and norms stay fp32
        assert quantized_linears(low)[0] > 0 and quantized_linears(low)[1] == 0
        assert quantized_linears(fp32)[0] == 0
    assert all(p.dtype == torch.float32 for p in low.heads.parameters())
    assert f"+{precision}#" in card_low.version and precision not in card32.version
    enc = tokenizer(["liked: Toy Story", "disliked: Heat (1995) (Action)", "a longer prompt " * 8],
                    padding=True, return_tensors="pt")
    features = torch.randn(3, len(FEATURES))
    with torch.inference_mode():
        a = fp32.predict(enc["input_ids"], enc["attention_mask"], ExitRule(), features).probs
        b = low.predict(enc["input_ids"], enc["attention_mask"], ExitRule(), features).probs
    assert np.isfinite(b).all() and np.abs(a - b).max() < 0.02  # fewer bits: close, not equal
    with pytest.raises(ValueError, match=r"precision 'int4'.*fp32, bf16, int8"):
        checkpoint.with_precision(low, "int4")


def test_an_int8_checkpoint_keeps_the_layers_its_card_names_in_fp32(tiny_scorer_checkpoint, tmp_path):
    """A card trained at int8 on 2026-12-05/06 lists the attention output projections it kept in fp32; a card from
    before the list existed loads as it was fitted, every Linear layer int8 (neither has activation smoothing)."""
    import json
    import shutil

    from scorer import checkpoint

    for name, kept in (("2026-12-05", ["attention.output.dense"]), ("before", None)):
        folder = tmp_path / name
        shutil.copytree(tiny_scorer_checkpoint, folder)
        config = {**json.loads((folder / "config.json").read_text()), "precision": "int8"}
        if kept is not None:
            config["fp32_linears"] = kept
        (folder / "config.json").write_text(json.dumps(config))
        model, _, card, _ = checkpoint.load(folder, tmp_path)
        float_names = [n for n, m in model.backbone.named_modules() if type(m) is torch.nn.Linear]
        if kept is None:
            assert card.fp32_linears == [] and float_names == []
        else:
            blocks = model.backbone.config.num_hidden_layers
            assert sorted(float_names) == sorted(f"encoder.layer.{i}.attention.output.dense" for i in range(blocks))
            assert quantized_linears(model)[0] > 0  # the rest (q, k, v, FFN) run int8 kernels


def test_smoothing_changes_no_score_in_fp32_and_its_scales_travel_with_an_int8_checkpoint(tiny_scorer_checkpoint,
                                                                                          tmp_path):
    """The activation smoothing is the same function in exact arithmetic (fp32 scores equal to 1e-5); an int8
    checkpoint stores its scales, loads to the very scores it was saved with, and without the file fails naming
    it."""
    import copy
    import dataclasses
    import json
    import shutil

    from scorer import checkpoint
    from scorer.features import FEATURES
    from scorer.smoothing import ALPHA, SmoothedLinear, smooth_linears

    fp32, tokenizer, card, _ = checkpoint.load(tiny_scorer_checkpoint, tmp_path)
    enc = tokenizer(["liked: Toy Story", "disliked: Heat (1995) (Action)", "a longer prompt " * 8],
                    padding=True, return_tensors="pt")
    ids, mask, features = enc["input_ids"], enc["attention_mask"], torch.randn(3, len(FEATURES))
    scales = checkpoint.int8_scales(fp32, ids, mask)
    blocks = fp32.backbone.config.num_hidden_layers
    assert len(scales) == 6 * blocks  # q, k, v, attention output, FFN in and out; not the pooler nobody reads
    exact = copy.deepcopy(fp32)
    smooth_linears(exact.backbone, scales)
    with torch.inference_mode():
        reference = fp32.predict(ids, mask, ExitRule(), features).probs
        assert np.abs(exact.predict(ids, mask, ExitRule(), features).probs - reference).max() < 1e-5
    low = checkpoint.with_precision(copy.deepcopy(fp32), "int8", smoothing=scales)
    assert sum(isinstance(m, SmoothedLinear) for m in low.backbone.modules()) == 6 * blocks
    assert quantized_linears(low) == (6 * blocks + 1, 0)  # every Linear int8, the pooler too

    folder = tmp_path / "int8"
    shutil.copytree(tiny_scorer_checkpoint, folder)  # its fp32 backbone/ stands in for a frozen reference
    checkpoint.save(folder, low, tokenizer, dataclasses.replace(card, precision="int8", int8_smoothing=ALPHA,
                                                                fine_tuned=False))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "fine_tuned": True}))
    loaded, _, loaded_card, _ = checkpoint.load(folder, tmp_path)
    assert loaded_card.int8_smoothing == ALPHA and "+int8#" in loaded_card.version
    with torch.inference_mode():
        saved = low.predict(ids, mask, ExitRule(), features).probs
        np.testing.assert_array_equal(loaded.predict(ids, mask, ExitRule(), features).probs, saved)
    (folder / checkpoint.SMOOTHING).unlink()
    with pytest.raises(FileNotFoundError, match=r"smoothing\.safetensors is missing"):
        checkpoint.load(folder, tmp_path)


def test_batch_dependence_is_zero_where_rows_never_mix_and_not_for_int8(tiny_scorer_checkpoint, tmp_path):
    """fp32 scores a row the same alone or beside others (padding masked); dynamic int8 takes its activation
    scale per batch, so a row's score moves with its mates."""
    import copy

    from scorer import checkpoint, experiment
    from scorer.features import FEATURES

    fp32, tokenizer, _, _ = checkpoint.load(tiny_scorer_checkpoint, tmp_path)
    texts = [f"liked: item {i} " + "and more words " * (i % 7) for i in range(12)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    data = experiment.Encoded(enc["input_ids"], enc["attention_mask"], torch.zeros(12),
                              torch.randn(12, len(FEATURES), generator=torch.Generator().manual_seed(0)))
    exact = experiment.batch_dependence(fp32, data, rows=4, mates=7)
    assert exact["rows"] == 4 and exact["max"] < 1e-6, exact
    int8 = checkpoint.with_precision(copy.deepcopy(fp32), "int8")
    assert experiment.batch_dependence(int8, data, rows=4, mates=7)["max"] > 1e-5


def test_int8_without_a_quantized_engine_stays_fp32_with_one_warning(tiny_scorer_checkpoint, tmp_path, monkeypatch):
    from structlog.testing import capture_logs

    from scorer import checkpoint

    model, _, _, _ = checkpoint.load(tiny_scorer_checkpoint, tmp_path)
    monkeypatch.setattr(checkpoint, "int8_engine", lambda: None)
    with capture_logs() as logs:
        checkpoint.with_precision(model, "int8")
    assert quantized_linears(model)[0] == 0 and quantized_linears(model)[1] > 0
    assert [e["event"] for e in logs] == ["int8_fallback"] and "quantized engine" in logs[0]["why"]
