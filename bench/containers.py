"""The product in containers -> ``bench/results/containers.json``

    python -m bench.containers [--replicas 2 --rows 400 --cold]

1. **Images** (``infra/images/build.py``): built cold (``--cold`` removes the project's images first, so the run
   times debootstrap, the ~7 GB dependency layer and the rest) and again cached (a digest of the inputs finds them).
2. **Compose** (``docker-compose.yml``, profile ``embedded``, Debian's ``docker-compose`` 1.29): Kafka and
   ``--replicas`` workers, each folding the ML-100K LightGCN checkpoint and every click into its own embedded
   qdrant-edge store and sharing the impressions partitions, from the host cache's checkpoints (the demo's graph
   and model). ``compose_up_s`` is ``up -d`` until every worker reports ready (``/readyz``, the compose
   healthcheck). From the host, through the published 127.0.0.1 port only: ``--rows`` rows of the ML-100K timeline
   after the checkpoint, each an impression request then its click; every request must be answered on
   ``exit-telemetry``, and the scorer consumer group must hold one member per replica. Then ``down -v``.
3. **Testcontainers**: ``pytest -m docker`` (Kafka from the local image; the click-path and scorer integration
   tests on it; the Qdrant-server test skips here, with its reason).

``ComposeStack`` and ``replay_and_collect`` are shared with ``tests/test_compose.py`` (a smaller run in CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench.machine import machine
from bench.reliability import Answers
from graph_updater.datasets import Interactions, load, time_split
from graph_updater.events import clicks_of, impressions_of
from infra.images import build
from infra.kafka import broker
from infra.runtime.settings import Settings
from worker.replay import publish

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


class ComposeError(RuntimeError):
    """docker-compose failed or the stack did not become ready; the message carries its output."""


@dataclass
class ComposeStack:
    """One ``docker-compose -p <project> --profile embedded`` stack; ``env`` holds the file's variables."""

    project: str
    env: dict[str, str]

    @classmethod
    def embedded(cls, project: str, cache: Path, data: Path, replicas: int, dataset: str, model: str) -> ComposeStack:
        """Kafka on a free 127.0.0.1 port and ``replicas`` workers reading checkpoints from ``cache``."""
        port = broker.free_port()
        return cls(project, {"EXITREC_HOST_CACHE": str(cache), "EXITREC_HOST_DATA": str(data),
                             "KAFKA_PORT": str(port), "REPLICAS": str(replicas), "DATASET": dataset,
                             "MODEL": model, "EXITREC_CONSUMER_GROUP": project})

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def compose(self, *args: str, timeout_s: float = 600) -> str:
        cmd = ["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project, "--profile", "embedded", *args]
        proc = subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise ComposeError(f"docker-compose {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout

    def workers(self) -> list[str]:
        return self.compose("ps", "-q", "worker").split()

    def up(self, timeout_s: float = 300) -> float:
        """``up -d``, then wait until every worker is healthy; seconds taken."""
        started = time.monotonic()
        self.compose("up", "-d")
        deadline = started + timeout_s
        while True:
            ids = self.workers()
            states = [subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                                     capture_output=True, text=True).stdout.strip() for cid in ids]
            if len(ids) == int(self.env["REPLICAS"]) and all(s == "healthy" for s in states):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise ComposeError(f"workers not ready in {timeout_s:.0f}s ({states}): {self.logs()[-3000:]}")
            time.sleep(1.0)

    def logs(self) -> str:
        with contextlib.suppress(ComposeError, subprocess.TimeoutExpired):
            return self.compose("logs", "--no-color", "--tail", "40", timeout_s=60)
        return ""

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans")


async def scorer_members(bootstrap: str, group: str) -> int:
    """Members of the scorer consumer group right now (one per live replica once the group has settled)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([f"{group}.scorer"])
        # raw DescribeGroups responses: each group is (error, id, state, protocol type, protocol, members, ...)
        return sum(len(described_group[5]) for response in described for described_group in response.groups)
    finally:
        await admin.close()


async def replay_and_collect(bootstrap: str, rows: Interactions, first_row: int, timeout_s: float = 300) -> dict:
    """Each row as an impression request then its click, from the host (one producer, each send acknowledged
    before the next); wait for every request's telemetry (:class:`bench.reliability.Answers`)."""
    requests = impressions_of(rows, first_row=first_row)
    clicks = clicks_of(rows, first_row=first_row)
    started = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for request, click in zip(requests, clicks, strict=True):
            await publish(bootstrap, "impressions", [request], progress=False, producer=producer)
            await publish(bootstrap, "clicks", [click], progress=False, producer=producer)
    finally:
        await producer.stop()
    wanted = {r.request_id for r in requests}
    answers, stop = Answers(), asyncio.Event()
    follower = asyncio.create_task(answers.follow(Settings(kafka_bootstrap=bootstrap), stop))
    while not wanted <= answers.seen.keys() and time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.2)
    stop.set()
    await follower
    return {"requests_sent": len(wanted), "requests_answered": len(wanted & answers.seen.keys()),
            "replay_and_answer_s": round(time.monotonic() - started, 1)}


def docker_tests(out_dir: Path) -> dict:
    """``pytest -m docker`` in a subprocess; passed / skipped (with reasons) / failed from its JUnit XML."""
    junit = out_dir / "docker-tests.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "docker", "-rs",
                    f"--junitxml={junit}"], cwd=REPO_ROOT, check=False)
    passed, skipped, failed = 0, [], 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        skip = case.find("skipped")
        if skip is not None:
            skipped.append({"test": case.get("name"), "reason": skip.get("message", "")})
        elif case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        else:
            passed += 1
    return {"testcontainers_tests_passed": passed, "testcontainers_tests_failed": failed,
            "testcontainers_tests_skipped": len(skipped), "testcontainers_skip_reasons": skipped}


def remove_project_images() -> None:
    """Every tag of the project's images, children before parents (an image with children cannot be removed)."""
    for name in reversed(build.IMAGES):
        if tags := build.tags(name):
            subprocess.run(["docker", "rmi", *tags], capture_output=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rows", type=int, default=400, help="ML-100K rows replayed (request + click each)")
    parser.add_argument("--cold", action="store_true", help="remove the project's images first and time a cold build")
    parser.add_argument("--model", default="early-exit-ml-100k-minilm-v2",
                        help="model folder under the host cache's models/ (the demo's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "containers.json")
    args = parser.parse_args()
    problem = build.engine_problem()
    if problem:
        raise SystemExit(f"bench.containers: {problem}")
    cache = Path(os.environ.get("EXITREC_CACHE_DIR", Path.home() / ".cache" / "exitrec"))
    data = Path(os.environ.get("EXITREC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    for needed in (cache / "graph" / "ml-100k", cache / "models" / args.model):
        if not needed.exists():
            raise SystemExit(f"bench.containers: {needed} is missing: run `bash infra/exitrec.sh demo` once first")
    if args.cold:
        remove_project_images()
    cold = build.ensure(("kafka", "worker"))
    cached = build.ensure(("kafka", "worker"))
    result: dict = {
        "machine": machine(), "command": " ".join(["python -m bench.containers", *sys.argv[1:]]),
        "image_build_s": {"cold" if args.cold else "first": round(sum(b.seconds for b in cold.values()), 1),
                          "cached": round(sum(b.seconds for b in cached.values()), 1),
                          "per_image": {name: b.seconds for name, b in cold.items()}},
        "compose": "Debian docker-compose " + subprocess.run(["docker-compose", "version", "--short"],
                                                             capture_output=True, text=True).stdout.strip(),
        "engine": subprocess.run(["docker", "version", "-f", "{{.Server.Version}} ({{.Server.Os}})"],
                                 capture_output=True, text=True).stdout.strip(),
        "replicas": args.replicas,
    }
    split = time_split(load("ml-100k", data), train=0.7, stream=0.15)
    rows = split.stream.take(slice(0, args.rows))
    stack = ComposeStack.embedded(f"exitrec-bench-{os.getpid()}", cache, data, args.replicas, "ml-100k", args.model)
    try:
        result["compose_up_s"] = round(stack.up(), 1)
        result.update(asyncio.run(replay_and_collect(stack.bootstrap, rows, len(split.train))))
        result["scorer_group_members"] = asyncio.run(scorer_members(stack.bootstrap, stack.project))
        result["workers_running"] = len(stack.workers())
    finally:
        stack.down()
    with tempfile.TemporaryDirectory() as tmp:
        result.update(docker_tests(Path(tmp)))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
