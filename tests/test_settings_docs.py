from pathlib import Path

from worker.settings import Settings

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
