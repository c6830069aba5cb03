"""Lower layers never import upper ones: schemas < infra.runtime < graph_updater < scorer < worker (and bench)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the project packages it may import
ALLOWED = {
    "schemas": {"schemas"},
    "infra/runtime": {"schemas", "infra"},
    "graph_updater": {"schemas", "infra", "graph_updater"},
    "scorer": {"schemas", "infra", "graph_updater", "scorer"},
}
PROJECT = {"schemas", "infra", "graph_updater", "scorer", "worker", "bench"}


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_only_itself_and_the_layers_below(package):
    offending = {str(p.relative_to(ROOT)): sorted(imported_packages(p) - ALLOWED[package])
                 for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in offending.items() if v} == {}
