"""``docker-compose.yml``'s embedded profile, brought up for real: Kafka and two worker replicas from the local
images, a slice of MovieLens-100K replayed from the host through the published loopback port, every request
answered, both replicas in the scorer group, then brought down. Skips without a Docker engine or docker-compose."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from conftest import DATA_DIR, docker_problem

from bench.containers import ComposeStack, replay_and_collect, scorer_members


def _problem() -> str | None:
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (`apt-get install docker-compose`, or `bash infra/images/engine.sh`)"
    return docker_problem()


pytestmark = [pytest.mark.docker, pytest.mark.skipif(_problem() is not None, reason=str(_problem()))]


def test_embedded_profile_answers_every_request_from_two_replicas(tmp_path, split, trained_checkpoint,
                                                                   tiny_scorer_checkpoint):
    from infra.images import build

    build.ensure(("kafka", "worker"))
    cache = tmp_path / "cache"
    shutil.copytree(trained_checkpoint, cache / "graph" / "ml-100k")
    shutil.copytree(tiny_scorer_checkpoint, cache / "models" / "tiny")
    stack = ComposeStack.embedded(f"exitrec-test-{tmp_path.name.lower()}", cache, DATA_DIR, replicas=2,
                                  dataset="ml-100k", model="tiny")
    try:
        stack.up(timeout_s=240)
        assert len(stack.workers()) == 2
        replay = asyncio.run(replay_and_collect(stack.bootstrap, split.stream.take(slice(0, 60)), len(split.train),
                                                timeout_s=120))
        assert replay["requests_answered"] == replay["requests_sent"] == 60
        assert asyncio.run(scorer_members(stack.bootstrap, stack.project)) == 2
    finally:
        stack.down()
