"""analytics/: example consumers need nothing of livetrack but the .avsc files."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ANALYTICS = Path(__file__).resolve().parents[3] / "analytics"
ALLOWED = {"__future__", "argparse", "csv", "io", "json", "sys", "time", "pathlib", "typing", "fastavro", "pyarrow",
           "analytics",
           "confluent_kafka"}


@pytest.mark.parametrize("path", sorted(ANALYTICS.glob("*.py")), ids=lambda p: p.name)
def test_imports_only_kafka_avro_and_the_standard_library(path: Path) -> None:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= ALLOWED, f"{path.name} imports {sorted(imported - ALLOWED)}"
