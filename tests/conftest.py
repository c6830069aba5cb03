"""Shared fixtures. The ``kafka`` fixture is a real Apache Kafka broker, never a mock.

Order of preference: ``EXITREC_TEST_KAFKA_BOOTSTRAP`` (a broker someone already runs), else the single-node
KRaft broker that ``infra/kafka`` resolves from Maven Central and starts on a free loopback port for the test
session. ``container_kafka_bootstrap`` is the same broker in a container that testcontainers starts from the
locally built ``exitrec-kafka`` image (``infra/images``); tests that use it skip, with the reason, where no Docker
engine answers.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from testcontainers.core.config import testcontainers_config

from graph_updater import checkpoint
from graph_updater.datasets import load, time_split
from graph_updater.train import train_offline
from infra.kafka import broker
from infra.runtime.settings import Settings

testcontainers_config.ryuk_disabled = True  # Ryuk's image is on Docker Hub (unreachable here); fixtures stop theirs

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


@functools.cache
def docker_problem() -> str | None:
    """Why no Docker engine answers (None when one does), asked once per test session: the docker-marked
    modules skip on it."""
    from infra.images.build import engine_problem

    return engine_problem()


@pytest.fixture(scope="session")
def container_kafka_bootstrap() -> str:
    """Kafka in a container (testcontainers, local image), published on a 127.0.0.1 port that it also advertises."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    from infra.images import build

    if docker_problem():
        pytest.skip(docker_problem())
    image = build.ensure(("kafka",))["kafka"].tag  # seconds when cached; a failed build fails the tests
    port = broker.free_port()
    container = (DockerContainer(image)
                 .with_env("KAFKA_LISTENERS", f"PLAINTEXT://:{port},CONTROLLER://:9093")
                 .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
                 .waiting_for(LogMessageWaitStrategy(broker.STARTED_MARK)))
    container.ports[f"{port}/tcp"] = ("127.0.0.1", port)  # loopback only, same port inside and out
    with container:
        yield f"127.0.0.1:{port}"


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


def tiny_scorer(folder: Path, graph_dim: int = 0) -> Path:
    """An early-exit checkpoint with a tiny BERT (2 layers, hidden 32, random weights), MiniLM's real tokenizer,
    the numeric features and a layer-0 head (and, with ``graph_dim``, a graph token with random weights): the whole
    serving path at a fraction of the cost. ``max_prob`` at 0.51 lets some rows exit early and sends the rest to
    the last head."""
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
    model = EarlyExitModel(backbone, [0, 1, 2], n_features=len(FEATURES), graph_dim=graph_dim)
    if graph_dim:
        torch.nn.init.normal_(model.graph_token.project.weight)
    model.calibration = HeadCalibration.identity(3)
    card = model_checkpoint.ModelCard("tiny-bert", [0, 1, 2], model.pooling, 80, True,
                                      {"rule": "max_prob", "threshold": 0.51}, features=list(FEATURES), prior=0.55,
                                      graph_dim=graph_dim)
    return model_checkpoint.save(folder, model, tokenizer, card)


@pytest.fixture(scope="session")
def tiny_scorer_checkpoint(tmp_path_factory) -> Path:
    return tiny_scorer(tmp_path_factory.mktemp("tiny-scorer"))


@pytest.fixture(scope="session")
def tiny_graph_token_checkpoint(tmp_path_factory) -> Path:
    """:func:`tiny_scorer` with a graph token over ``trained_checkpoint``'s 32-dimensional LightGCN vectors."""
    return tiny_scorer(tmp_path_factory.mktemp("tiny-graph-token"), graph_dim=32)


def isolated_settings(bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings isolated per test: own topic prefix, consumer group, cache and state folders."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60]
    tag = f"{name}-{np.random.default_rng().integers(1 << 30)}"
    return Settings(kafka_bootstrap=bootstrap, topic_prefix=f"{tag}.", consumer_group=f"g-{tag}",
                    cache_dir=tmp_path / "cache", data_dir=DATA_DIR, topic_partitions=4)


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str, request: pytest.FixtureRequest) -> Settings:
    return isolated_settings(kafka_bootstrap, tmp_path, request)


@pytest.fixture
def container_settings(tmp_path: Path, container_kafka_bootstrap: str, request: pytest.FixtureRequest) -> Settings:
    """``settings`` on the containerised broker."""
    return isolated_settings(container_kafka_bootstrap, tmp_path, request)
