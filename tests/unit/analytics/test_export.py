"""analytics.export: Parquet columns typed from the .avsc, rows DuckDB can query."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb

from analytics.export import AVSC, TOPICS, arrow_schema, write_files


def test_every_exported_topic_has_a_typed_parquet_schema() -> None:
    for record in TOPICS.values():
        schema, _ = arrow_schema(json.loads((AVSC / f"{record}.avsc").read_text()))
        assert {"partition", "offset", "kafka_ts"} <= set(schema.names)


def test_duckdb_reads_the_parquet_written(tmp_path: Path) -> None:
    schema, as_json = arrow_schema(json.loads((AVSC / "CellFeatures.avsc").read_text()))
    assert not as_json
    base = {"kind": "hopping", "size_s": 120, "start_ts": 0, "end_ts": 120_000, "final": True, "supply": 2,
            "demand": 1, "smoothed_supply": 2.0, "smoothed_demand": 1.0, "speed_mps": 5.0, "speed_source": "CELL",
            "speed_segments": 1, "emitted_ts": 1, "partition": 0, "offset": 0, "kafka_ts": 1}
    rows = [{**base, "cell": "a", "surge": 1.5}, {**base, "cell": "a", "surge": 2.5}, {**base, "cell": "b", "surge": 1.0}]
    write_files(rows, schema, tmp_path, "cell-features")
    got = duckdb.sql(f"SELECT cell, avg(surge) FROM '{tmp_path}/cell-features.parquet' WHERE final "
                     "GROUP BY cell ORDER BY cell").fetchall()
    assert got == [("a", 2.0), ("b", 1.0)]
    assert (tmp_path / "cell-features.csv").read_text().startswith("cell,kind,size_s")
