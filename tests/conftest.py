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

from graph_updater.datasets import load
from infra.kafka import broker
from worker.settings import Settings

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


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str, request: pytest.FixtureRequest) -> Settings:
    """Settings isolated per test: own topic prefix, consumer group, cache and state folders."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60]
    tag = f"{name}-{np.random.default_rng().integers(1 << 30)}"
    return Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"{tag}.", consumer_group=f"g-{tag}",
                    cache_dir=tmp_path / "cache", data_dir=DATA_DIR, topic_partitions=4)
