import re
from pathlib import Path

from infra.runtime.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme_table():
    text = README.read_text()
    missing = [f"EXITREC_{name.upper()}" for name in Settings.model_fields if f"`EXITREC_{name.upper()}`" not in text]
    assert not missing, f"README configuration table lacks {missing}"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("EXITREC_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("EXITREC_VECTOR_BACKEND", "qdrant")
    s = Settings()
    assert s.topic_partitions == 12 and s.vector_backend == "qdrant"
    assert s.topic("clicks") == "clicks"


def test_compose_file_declares_real_commands_known_settings_and_durable_state():
    """docker-compose.yml is also parsed here, where no engine may exist (``tests/test_compose.py`` runs its
    embedded profile): its worker services run real commands from the locally built worker image and set only
    settings that exist, with values the settings accept; Kafka's log and Qdrant's storage both live in named
    volumes; the Qdrant server matches the pinned client; workers wait for healthy services; ports are loopback."""
    import yaml

    root = README.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "worker", "qdrant", "graph-updater", "graph-shard", "scorer"} <= set(services)
    assert services["worker"]["command"] == ["worker"] and "replicas" in services["worker"]["deploy"]
    assert services["graph-updater"]["command"] == ["graph-updater"]
    assert services["graph-shard"]["command"] == ["graph-updater", "--partitioned"]
    assert "replicas" in services["graph-shard"]["deploy"]
    assert set(services["scorer"]["profiles"]) >= set(services["graph-shard"]["profiles"]), "scorers run with them"
    assert services["scorer"]["command"] == ["scorer"] and "replicas" in services["scorer"]["deploy"]
    assert services["kafka"]["image"] == "exitrec-kafka:latest"
    for name in ("worker", "graph-updater", "graph-shard", "scorer"):
        env = services[name]["environment"]
        assert services[name]["image"] == "exitrec-worker:latest"
        unknown = [k for k in env if k.removeprefix("EXITREC_").lower() not in Settings.model_fields]
        assert not unknown, f"{name} sets unknown variables {unknown}"
        fixed = {k.removeprefix("EXITREC_").lower(): v for k, v in env.items() if "${" not in str(v)}
        Settings(**fixed)  # raises on a value the settings reject
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert 'ENTRYPOINT ["exitrec"]' in (root / "infra" / "images" / "worker.Dockerfile").read_text()
    volumes = set(compose["volumes"])
    assert any(v.split(":")[0] in volumes for v in services["kafka"]["volumes"]), "the click log must be durable"
    assert any(v.split(":")[0] in volumes for v in services["qdrant"]["volumes"])
    client_pin = re.search(r'"qdrant-client==(\d+\.\d+)', (root / "pyproject.toml").read_text()).group(1)
    assert services["qdrant"]["image"].startswith(f"qdrant/qdrant:v{client_pin}.")
    for name in ("kafka", "qdrant"):
        assert "healthcheck" in services[name]
        assert services["scorer"]["depends_on"][name]["condition"] == "service_healthy"
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)


def test_settings_reach_a_child_process_through_the_environment(monkeypatch, tmp_path):
    """What `exitrec worker` subprocesses (tests, benchmark) rely on: environment() round-trips."""
    chosen = Settings(replica_id="r7", scorer_checkpoint=tmp_path, retriever="text", topic_partitions=6)
    env = chosen.environment()
    assert "EXITREC_QDRANT_URL" not in env  # unset stays unset
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == chosen


def test_scripts_read_only_documented_settings_and_ci_tools_are_pinned():
    """A variable a script reads must be the setting users set (EXITREC_CACHE vs EXITREC_CACHE_DIR was not);
    the tools CI runs are pinned, so a new release cannot fail CI with no change to the code."""
    import tomllib

    root = README.parent
    for script in ("infra/venv.sh", "infra/exitrec.sh", "infra/kafka/broker.py"):
        names = set(re.findall(r"EXITREC_[A-Z_]+", (root / script).read_text()))
        unknown = [n for n in names if n.removeprefix("EXITREC_").lower() not in Settings.model_fields]
        assert not unknown, f"{script} reads {unknown}, which are not settings"
    dev = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", d) for d in dev), dev
