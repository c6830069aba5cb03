"""The Kafka image's entrypoint: a single-node KRaft broker in the foreground, configured by ``KAFKA_*`` variables.

Runs inside the container with the base image's Python (standard library only). Every ``KAFKA_FOO_BAR`` variable
becomes the broker property ``foo.bar`` (the convention of Apache's own ``apache/kafka`` image, so a compose file
written for that image runs unchanged; ``KAFKA_HEAP_OPTS`` is the JVM's heap, not a property) over single-node
defaults. Storage under ``log.dirs`` is formatted on first start (``CLUSTER_ID`` or a random id) and reused after,
so a container restarted on its volume keeps every topic and record.
"""

from __future__ import annotations

import os
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

KAFKA_HOME = Path("/opt/kafka")
DEFAULTS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.quorum.voters": "1@localhost:9093",
    "listeners": "PLAINTEXT://:9092,CONTROLLER://:9093",
    "advertised.listeners": "PLAINTEXT://localhost:9092",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "log.dirs": "/var/lib/kafka/data",
    "num.partitions": "4",
    "auto.create.topics.enable": "true",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "log.retention.hours": "-1",
}
NOT_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_HOME"}


def properties(environ: dict[str, str]) -> dict[str, str]:
    """The broker's properties: ``DEFAULTS`` overridden by ``KAFKA_FOO_BAR=v`` as ``foo.bar=v``."""
    props = dict(DEFAULTS)
    for name, value in environ.items():
        if name.startswith("KAFKA_") and name not in NOT_PROPERTIES:
            props[name.removeprefix("KAFKA_").lower().replace("_", ".")] = value
    return props


def _cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, never starting with ``-`` (read as an option)."""
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def main() -> None:
    props = properties(dict(os.environ))
    config = KAFKA_HOME / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in sorted(props.items())))
    java = ["java", *os.environ.get("KAFKA_HEAP_OPTS", "-Xmx512m").split(),
            f"-Dlog4j2.configurationFile={KAFKA_HOME / 'log4j2.xml'}", "-cp", f"{KAFKA_HOME / 'libs'}/*"]
    log_dir = Path(props["log.dirs"].split(",")[0])
    if not (log_dir / "meta.properties").exists():
        cluster = os.environ.get("CLUSTER_ID") or _cluster_id()
        pid = os.fork()
        if pid == 0:
            os.execvp("java", [*java, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(config)])
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"formatting KRaft storage in {log_dir} failed")
    os.execvp("java", [*java, "kafka.Kafka", str(config)])


if __name__ == "__main__":
    main()
