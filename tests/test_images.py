"""The image builder's contracts: Kafka's ``KAFKA_*`` variables, the reason given when no engine answers, and a
failed build that names its step and carries the engine's words."""

from __future__ import annotations

import pytest
from conftest import docker_problem

from infra.images import build
from infra.images.kafka_entrypoint import DEFAULTS, properties


def test_kafka_variables_become_broker_properties_over_single_node_defaults():
    props = properties({"KAFKA_ADVERTISED_LISTENERS": "INTERNAL://kafka:19092", "KAFKA_NUM_PARTITIONS": "8",
                        "KAFKA_HEAP_OPTS": "-Xmx1g", "PATH": "/usr/bin"})
    assert props["advertised.listeners"] == "INTERNAL://kafka:19092" and props["num.partitions"] == "8"
    assert "heap.opts" not in props and "path" not in props
    assert props["process.roles"] == DEFAULTS["process.roles"] and props["offsets.topic.replication.factor"] == "1"


def test_no_engine_is_reported_in_one_line_with_the_way_to_start_one(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("TMPDIR", "/nonexistent")  # no engine.sh log to quote
    problem = build.engine_problem()
    assert problem is not None and "no Docker engine answers" in problem and "engine.sh" in problem
    assert "\n" not in problem


@pytest.mark.docker
@pytest.mark.skipif(docker_problem() is not None, reason=str(docker_problem()))
def test_a_failed_build_names_its_step_and_the_engines_error():
    with pytest.raises(build.ImageError, match=r"docker build failed \(1\)(?s:.*)Step \d+/\d+ : FROM"):
        build.kafka("exitrec-base:does-not-exist", rebuild=True)
