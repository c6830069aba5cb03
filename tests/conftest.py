"""Shared fixtures. The ``kafka`` fixture is a real Apache Kafka broker, never a mock.

Order of preference: ``EXITREC_TEST_KAFKA_BOOTSTRAP`` (a broker someone already runs), else the single-node
KRaft broker that ``infra/kafka`` resolves from Maven Central and starts on a free loopback port for the test
session. Docker-only fixtures (testcontainers) live in ``test_docker_services.py`` and skip without an engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from graph_updater import checkpoint
from graph_updater.datasets import load, time_split
from graph_updater.train import train_offline
from infra.kafka import broker
from infra.runtime.settings import Settings

DATA_DIR = Path(os.environ.get("EXITREC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    existing = os.environ.get("EXITREC_TEST_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    run_dir = tmp_path_factory.mktemp("kafka")
    info = broker.start(run_dir, partitions=4)
    try:
        yield info.bootstrap
    finally:
        broker.stop(run_dir)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ml-100k" / "u.data").exists():
        pytest.fail(f"datasets not found under {DATA_DIR}; set EXITREC_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def ml100k(data_dir: Path):
    return load("ml-100k", data_dir)


@pytest.fixture(scope="session")
def split(ml100k):
    return time_split(ml100k, train=0.7, stream=0.15)


@pytest.fixture(scope="session")
def trained_checkpoint(split, tmp_path_factory) -> Path:
    """A LightGCN checkpoint (dim 32, 3 epochs) of MovieLens-100K's first 70%."""
    updater = checkpoint.build_updater(split.train, dim=32, num_layers=3)
    train_offline(updater.graph, epochs=3)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt"), updater, split.train, {"dataset": "ml-100k"})


@pytest.fixture(scope="session")
def tiny_scorer_checkpoint(tmp_path_factory) -> Path:
    """An early-exit checkpoint with a tiny BERT (2 layers, hidden 32, random weights), MiniLM's real tokenizer,
    the numeric features and a layer-0 head: the whole serving path at a fraction of the cost. ``max_prob`` at
    0.51 lets some rows exit early and sends the rest to the last head."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from scorer import backbones
    from scorer import checkpoint as model_checkpoint
    from scorer.calibration import HeadCalibration
    from scorer.features import FEATURES
    from scorer.model import EarlyExitModel

    tokenizer = AutoTokenizer.from_pretrained(str(backbones.resolve("minilm", Path("."))))
    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    model = EarlyExitModel(backbone, [0, 1, 2], n_features=len(FEATURES))
    model.calibration = HeadCalibration.identity(3)
    card = model_checkpoint.ModelCard("tiny-bert", [0, 1, 2], model.pooling, 80, True,
                                      {"rule": "max_prob", "threshold": 0.51}, features=list(FEATURES), prior=0.55)
    return model_checkpoint.save(tmp_path_factory.mktemp("tiny-scorer"), model, tokenizer, card)


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str, request: pytest.FixtureRequest) -> Settings:
    """Settings isolated per test: own topic prefix, consumer group, cache and state folders."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60]
    tag = f"{name}-{np.random.default_rng().integers(1 << 30)}"
    return Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"{tag}.", consumer_group=f"g-{tag}",
                    cache_dir=tmp_path / "cache", data_dir=DATA_DIR, topic_partitions=4)
