"""Write the JSON Schema of each contract to ``schemas/json/<name>.v<version>.json`` for analytics consumers."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.messages import CONTRACTS, SCHEMA_VERSION

JSON_DIR = Path(__file__).resolve().parent / "json"


def schema_documents() -> dict[str, dict]:
    """File name -> JSON Schema (draft 2020-12, as pydantic emits it) of each contract."""
    return {f"{name}.v{SCHEMA_VERSION}.json": model.model_json_schema(mode="serialization")
            for name, model in CONTRACTS.items()}


def export(out_dir: Path = JSON_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, doc in schema_documents().items():
        path = out_dir / file_name
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
