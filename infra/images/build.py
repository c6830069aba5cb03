"""Build the project's container images on this machine, with no registry: base, Kafka, Python deps, worker.

    python -m infra.images.build [--only kafka|worker] [--rebuild]      (also: ``exitrec images build``)

- ``exitrec-base``: Debian bookworm from Debian's own packages (``debootstrap --variant=minbase`` with a JRE and
  Python 3.11), turned into an image by ``docker import``. Needs root and ``debootstrap`` (``infra/images/engine.sh``
  installs both where apt-get can).
- ``exitrec-kafka``: the base plus the Kafka jars ``infra/kafka`` resolves from Maven Central and
  ``kafka_entrypoint.py`` (``KAFKA_*`` variables as broker properties, as Apache's ``apache/kafka`` image reads them).
- ``exitrec-python``: the base plus the site-packages of the project's virtualenv (``infra/venv.sh``: the tested
  dependency set, models' wheels included). PyPI's torch is the CUDA build, so this layer is ~7 GB.
- ``exitrec-worker``: the dependency image plus the project's code, entrypoint ``exitrec``.

Each image is tagged with a digest of its inputs (recipe, parent tag, every file of its build context), so a second
run finds it and takes seconds; the same image is also tagged ``:latest``, which ``docker-compose.yml`` names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUITE = "bookworm"
BASE_PACKAGES = ("openjdk-17-jre-headless", "python3.11", "libgomp1")
APP_PARTS = ("worker", "graph_updater", "scorer", "schemas", "infra", "bench", "pyproject.toml", "README.md")
APP_SKIP = ("__pycache__", "*.pyc", "results", "gpu_inputs", "*.egg-info")
SITE_SKIP = ("__editable__*", "exitrec-*.dist-info")  # the host's editable install of this clone
IMAGES = ("base", "kafka", "python", "worker")


class ImageError(RuntimeError):
    """An image could not be built; the message names the step and what to do."""


@dataclass(frozen=True)
class Built:
    """One image: its content tag, whether this run built it (False: found in the engine), and the seconds taken."""

    name: str
    tag: str
    built: bool
    seconds: float


def engine_problem() -> str | None:
    """None when a Docker engine answers on this machine, else the reason in one line: the client's error, and the
    daemon's own first error line when ``engine.sh`` tried to start it here."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:  # no socket, no permission, daemon down: all mean "no engine"
        reason = f"no Docker engine answers ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        log = Path(os.environ.get("TMPDIR", "/tmp")) / "exitrec-dockerd.log"  # written by engine.sh
        daemon = [line for line in log.read_text(errors="replace").splitlines()
                  if "level=fatal" in line or "level=error" in line] if log.exists() else []
        return (f"{reason}; dockerd said: {daemon[0][-300:]}" if daemon
                else f"{reason}; start one with `bash infra/images/engine.sh` (root)")
    return None


def _docker(*args: str, stdin: object = None) -> str:
    proc = subprocess.run(["docker", *args], stdin=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"docker {args[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")
    return proc.stdout


def exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def tags(name: str) -> list[str]:
    """Every ``repository:tag`` of the project's image ``name`` in the engine."""
    return _docker("images", f"exitrec-{name}", "--format", "{{.Repository}}:{{.Tag}}").split()


def _digest_tree(root: Path, digest: hashlib._Hash) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())


def _tag(name: str, digest: hashlib._Hash) -> str:
    return f"exitrec-{name}:{digest.hexdigest()[:16]}"


def _finish(name: str, tag: str, started: float, built: bool) -> Built:
    """Tag ``tag`` as ``:latest`` too; after a build, drop this image's older content tags (disk stays bounded when
    the code or the dependencies change run after run; a layer still used by a container is kept by the engine)."""
    _docker("tag", tag, f"exitrec-{name}:latest")
    if built:
        old = [t for t in tags(name) if t not in (tag, f"exitrec-{name}:latest")]
        if old:
            subprocess.run(["docker", "rmi", *old], capture_output=True, check=False)
    return Built(name, tag, built, round(time.monotonic() - started, 1))


def base(rebuild: bool = False) -> Built:
    """Debian ``SUITE`` (minbase) with ``BASE_PACKAGES``, from debootstrap into a temporary folder."""
    started = time.monotonic()
    tag = _tag("base", hashlib.sha256(f"{SUITE} {' '.join(BASE_PACKAGES)} minbase".encode()))
    if exists(tag) and not rebuild:
        return _finish("base", tag, started, False)
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: `bash infra/images/engine.sh` (root) installs it")
    with tempfile.TemporaryDirectory(prefix="exitrec-rootfs-") as rootfs:
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                               rootfs], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"debootstrap failed ({proc.returncode}; it needs root and Debian's mirror): "
                             f"{proc.stdout[-800:]}{proc.stderr[-800:]}")
        shutil.rmtree(Path(rootfs) / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        try:
            _docker("import", "--change", "ENV LANG=C.UTF-8", "-", tag, stdin=tar.stdout)
        finally:
            tar.wait()
    return _finish("base", tag, started, True)


def _build_staged(name: str, parent_tag: str, context: Path, started: float, rebuild: bool,
                  **build_args: str) -> Built:
    """Build ``<name>.Dockerfile`` in the staged ``context`` unless its tag exists: the tag is a digest of the
    parent's tag and every staged file."""
    digest = hashlib.sha256(parent_tag.encode())
    _digest_tree(context, digest)
    tag = _tag(name, digest)
    if exists(tag) and not rebuild:
        return _finish(name, tag, started, False)
    args = [arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")]
    _docker("build", "-q", "-t", tag, "-f", str(context / f"{name}.Dockerfile"), *args, str(context))
    return _finish(name, tag, started, True)


def kafka(base_tag: str, rebuild: bool = False) -> Built:
    """The base plus Kafka's jars (``infra.kafka.broker.resolve_classpath``) and the entrypoint."""
    from infra.kafka import broker

    started = time.monotonic()
    libs = broker.resolve_classpath()
    with tempfile.TemporaryDirectory(prefix="exitrec-kafka-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(libs, ctx / "libs", ignore=shutil.ignore_patterns(".complete"))
        for source in (HERE / "kafka.Dockerfile", HERE / "kafka_entrypoint.py", broker.LOG4J2):
            shutil.copy(source, ctx / source.name)
        return _build_staged("kafka", base_tag, ctx, started, rebuild, BASE=base_tag)


def project_venv() -> Path:
    """The project's virtualenv: this interpreter's when it is one ``infra/venv.sh`` completed, else what the
    script prints (building it when missing)."""
    if (Path(sys.prefix) / ".complete").exists():
        return Path(sys.prefix)
    proc = subprocess.run(["bash", str(REPO / "infra" / "venv.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"infra/venv.sh failed: {proc.stderr[-1500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def python(base_tag: str, rebuild: bool = False) -> Built:
    """The base plus the virtualenv's site-packages, streamed to ``docker build`` as a tar context (no copy on disk).

    The tag covers the venv's name (a digest of the dependency lists) and its ``requirements.txt``."""
    started = time.monotonic()
    venv = project_venv()
    dockerfile = HERE / "python.Dockerfile"
    digest = hashlib.sha256(base_tag.encode() + venv.name.encode() + dockerfile.read_bytes())
    digest.update((venv / "requirements.txt").read_bytes())
    tag = _tag("python", digest)
    if exists(tag) and not rebuild:
        return _finish("python", tag, started, False)
    excludes = [f"--exclude={pattern}" for pattern in SITE_SKIP]
    tar = subprocess.Popen(["tar", "-c", "-f", "-", "-C", str(HERE), dockerfile.name, *excludes,
                            "-C", str(venv / "lib" / "python3.11"), "site-packages"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    try:
        _docker("build", "-q", "-t", tag, "-f", dockerfile.name, "--build-arg", f"BASE={base_tag}", "-",
                stdin=tar.stdout)
    finally:
        status = tar.wait()
    if status > 1:  # 1 = "file changed as we read it": a .pyc rewritten (atomically) by a running interpreter
        raise ImageError(f"tar of {venv} failed ({status})")
    return _finish("python", tag, started, True)


def worker(python_tag: str, rebuild: bool = False) -> Built:
    """The dependency image plus this clone's packages (``APP_PARTS``) under ``/app``."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="exitrec-worker-ctx-") as tmp:
        ctx = Path(tmp)
        for part in APP_PARTS:
            source = REPO / part
            if source.is_dir():
                shutil.copytree(source, ctx / "app" / part, ignore=shutil.ignore_patterns(*APP_SKIP))
            else:
                shutil.copy(source, ctx / "app" / part)
        shutil.copy(HERE / "worker.Dockerfile", ctx / "worker.Dockerfile")
        return _build_staged("worker", python_tag, ctx, started, rebuild, PYTHON=python_tag)


def ensure(wanted: tuple[str, ...] = ("kafka", "worker"), rebuild: bool = False) -> dict[str, Built]:
    """Build (or find) the images ``wanted`` names and the ones they stand on; raises ``ImageError``."""
    problem = engine_problem()
    if problem:
        raise ImageError(problem)
    done = {"base": base(rebuild)}
    if "kafka" in wanted:
        done["kafka"] = kafka(done["base"].tag, rebuild)
    if "python" in wanted or "worker" in wanted:
        done["python"] = python(done["base"].tag, rebuild)
    if "worker" in wanted:
        done["worker"] = worker(done["python"].tag, rebuild)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=IMAGES, action="append", help="build only these (and their parents)")
    parser.add_argument("--rebuild", action="store_true", help="build again even when the tagged image exists")
    args = parser.parse_args(argv)
    try:
        done = ensure(tuple(args.only or ("kafka", "worker")), args.rebuild)
    except ImageError as exc:
        raise SystemExit(f"exitrec images: {exc}") from None  # the step, then its log's tail
    print(json.dumps({name: asdict(built) for name, built in done.items()}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
