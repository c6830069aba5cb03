"""A real single-node Apache Kafka broker (KRaft mode) on a loopback port, without Docker.

The broker and its runtime classpath are resolved from Maven Central with ``mvn dependency:copy-dependencies``
(``infra/kafka/pom.xml``) into a cache outside the clone, so later runs start in seconds. ``start`` formats
KRaft storage once per run directory (or again with ``fresh``), then launches ``kafka.Kafka`` with ``java`` on
that directory's log, and waits until the port accepts TCP connections and the broker has logged that it started:
a stopped or killed broker comes back with its cluster id, port, topics and records; ``stop`` sends SIGTERM and
waits for a clean exit.

State lives in one run directory (``server.properties``, ``data/``, ``broker.log``, ``broker.json``), so the
CLI (``exitrec kafka up|down|status``) and the pytest fixture share the same code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J2 = HERE / "log4j2.xml"
STARTED_MARK = "Kafka Server started"


class BrokerError(RuntimeError):
    """The broker could not be resolved, formatted or started; the message says which step and why."""


@dataclass(frozen=True)
class BrokerInfo:
    """Where a running broker listens and how to stop it."""

    bootstrap: str
    port: int
    controller_port: int
    pid: int
    run_dir: str
    restarted: bool = False  # started again on an existing log (same cluster id, port, topics)
    port_note: str = ""  # why the broker is not on the preferred port, when it is not


def cache_root() -> Path:
    return Path(os.environ.get("EXITREC_CACHE_DIR", Path.home() / ".cache" / "exitrec"))


def _pom_version() -> str:
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


def resolve_classpath(quiet: bool = True) -> Path:
    """Return a folder of jars holding the broker's runtime classpath, fetching it with Maven once."""
    libs = cache_root() / f"kafka-{_pom_version()}-{_file_digest(POM)}" / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven ('mvn') is not on PATH: it is needed once to fetch Apache Kafka from Maven Central")
    if shutil.which("java") is None:
        raise BrokerError("Java ('java') is not on PATH: the Kafka broker is a JVM program")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(
            f"mvn failed to resolve Kafka ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    done.touch()
    return libs


def _file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what Kafka's Uuid parses), never
    starting with ``-``: ``kafka-storage format -t -abc…`` would read it as an option and fail (1 start in 64).
    Kafka's own ``Uuid.randomUuid()`` draws again for the same reason."""
    while True:
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_properties(port: int, controller_port: int, data_dir: Path, partitions: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data_dir}",
        f"num.partitions={partitions}",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "log.retention.hours=-1",
        "",
    ])


def _java(libs: Path, main: str, *args: str, heap: str = "256m") -> list[str]:
    return ["java", f"-Xmx{heap}", f"-Dlog4j2.configurationFile={LOG4J2}", "-cp", f"{libs}/*", main, *args]


def _stored_ports(props: Path) -> tuple[int, int]:
    """``(port, controller_port)`` from an existing run folder's ``server.properties``."""
    for line in props.read_text().splitlines():
        if line.startswith("listeners="):
            ports = dict(part.split("://", 1) for part in line.split("=", 1)[1].split(","))
            return int(ports["PLAINTEXT"].rsplit(":", 1)[1]), int(ports["CONTROLLER"].rsplit(":", 1)[1])
    raise BrokerError(f"{props} has no listeners= line: wipe the run folder with --fresh")


def start(run_dir: Path, port: int | None = None, partitions: int = 4, heap: str = "1g", timeout_s: float = 90.0,
          fresh: bool = False, preferred_port: int | None = None) -> BrokerInfo:
    """Start the broker of ``run_dir`` and return once it accepts connections (a running one is returned as is).

    A run folder that already holds formatted storage is restarted on its own log: same cluster id, ports and
    topics, every record kept (``restarted`` is true). ``fresh`` (or a folder without storage) wipes the folder and
    formats new storage on ``port``, else ``preferred_port`` when it is free, else any free port (``port_note``
    says why it is not the preferred one)."""
    libs = resolve_classpath()
    run_dir = Path(run_dir)
    existing = status(run_dir)
    if existing is not None and not fresh:
        return existing
    if existing is not None:
        stop(run_dir)
    props = run_dir / "server.properties"
    restart = not fresh and props.exists() and (run_dir / "data" / "meta.properties").exists()
    note = ""
    if restart:
        stored, controller_port = _stored_ports(props)
        if port is not None and port != stored:
            raise BrokerError(f"the broker in {run_dir} keeps its log on port {stored}: start it without a port, or "
                              f"wipe its log with --fresh to use port {port}")
        port = stored
        for p in (port, controller_port):
            if _port_open(p):
                raise BrokerError(f"port {p} of the broker in {run_dir} is taken by another process: stop that "
                                  f"process, or wipe this broker's log with --fresh to start on a free port")
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        (run_dir / "data").mkdir(parents=True)
        if port is None and preferred_port is not None:
            if _port_open(preferred_port):
                note = f"port {preferred_port} is taken"
            else:
                port = preferred_port
        port = port or free_port()
        controller_port = free_port()
        props.write_text(_server_properties(port, controller_port, run_dir / "data", partitions))
        fmt = subprocess.run(_java(libs, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props)),
                             capture_output=True, text=True)
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
    log = (run_dir / "broker.log").open("a" if restart else "w")
    log_start = log.tell()
    proc = subprocess.Popen(_java(libs, "kafka.Kafka", str(props), heap=heap), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"broker exited with {proc.returncode}; see {run_dir / 'broker.log'}:\n"
                              + (run_dir / "broker.log").read_text()[-3000:])
        if _port_open(port) and STARTED_MARK.encode() in (run_dir / "broker.log").read_bytes()[log_start:]:
            info = BrokerInfo(f"127.0.0.1:{port}", port, controller_port, proc.pid, str(run_dir), restart, note)
            (run_dir / "broker.json").write_text(json.dumps(asdict(info)))
            return info
        time.sleep(0.3)
    proc.terminate()
    raise BrokerError(f"broker did not start within {timeout_s:.0f}s; see {run_dir / 'broker.log'}")


def cluster_id(run_dir: Path) -> str:
    """The KRaft cluster id formatted into ``run_dir``'s storage."""
    for line in (Path(run_dir) / "data" / "meta.properties").read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1]
    raise BrokerError(f"{run_dir}/data/meta.properties names no cluster.id")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def status(run_dir: Path) -> BrokerInfo | None:
    """The running broker recorded in ``run_dir``, or None when none is running there."""
    meta = Path(run_dir) / "broker.json"
    if not meta.exists():
        return None
    info = BrokerInfo(**json.loads(meta.read_text()))
    if _alive(info.pid) and _port_open(info.port):
        return info
    return None


def stop(run_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the broker recorded in ``run_dir`` (SIGTERM, then SIGKILL); True if one was running."""
    meta = Path(run_dir) / "broker.json"
    if not meta.exists():
        return False
    info = BrokerInfo(**json.loads(meta.read_text()))
    meta.unlink()
    if not _alive(info.pid):
        return False
    os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(info.pid, os.WNOHANG)[0] != 0:
                return True
        except ChildProcessError:
            if not _alive(info.pid):
                return True
        time.sleep(0.2)
    os.killpg(info.pid, signal.SIGKILL)
    return True
