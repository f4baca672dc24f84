"""Export `cell-features`, `rides` and `order-events` to Parquet and CSV with nothing of livetrack but its .avsc.

    python -m analytics.export --bootstrap 127.0.0.1:19092 --out exports/ \\
        [--topic cell-features --topic rides --topic order-events] [--idle-exit-s 5]

Writes `<out>/<topic>.parquet` (pyarrow, columns typed from the .avsc: long -> int64, double ->
float64, enum and string -> string, a ["null", T] union -> nullable T, arrays and maps as JSON text)
and `<out>/<topic>.csv`, each row a record's fields then its Kafka partition, offset and timestamp.
A record whose fingerprint is not the .avsc's is counted and skipped. Query the Parquet with DuckDB:

    SELECT cell, avg(surge) FROM 'exports/cell-features.parquet' WHERE final GROUP BY cell;
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet

from analytics.features_csv import Decoder, records

AVSC = Path(__file__).resolve().parent.parent / "schemas" / "avsc"
TOPICS = {"cell-features": "CellFeatures", "rides": "RideEvent", "order-events": "OrderEvent"}
PRIMITIVES = {"long": pyarrow.int64(), "int": pyarrow.int32(), "double": pyarrow.float64(),
              "float": pyarrow.float32(), "string": pyarrow.string(), "boolean": pyarrow.bool_(),
              "bytes": pyarrow.binary()}
POSITION = [("partition", pyarrow.int32()), ("offset", pyarrow.int64()), ("kafka_ts", pyarrow.int64())]


def arrow_type(avro: Any) -> tuple[pyarrow.DataType, bool]:
    """The Arrow type of an Avro field type, and whether it is JSON text (arrays, maps, records)."""
    if isinstance(avro, list):  # ["null", T]
        return arrow_type(next(t for t in avro if t != "null"))
    if isinstance(avro, dict):
        if avro["type"] == "enum":
            return pyarrow.string(), False
        if avro["type"] in PRIMITIVES:
            return PRIMITIVES[avro["type"]], False
        return pyarrow.string(), True
    if avro in PRIMITIVES:
        return PRIMITIVES[avro], False
    return pyarrow.string(), True  # a named type defined earlier in the schema


def arrow_schema(avsc: dict[str, Any]) -> tuple[pyarrow.Schema, set[str]]:
    """The Parquet schema of a record's rows, and which of its fields are written as JSON text."""
    fields, as_json = [], set()
    for f in avsc["fields"]:
        kind, text = arrow_type(f["type"])
        fields.append(pyarrow.field(f["name"], kind, nullable=True))
        if text:
            as_json.add(f["name"])
    return pyarrow.schema(fields + [pyarrow.field(n, t) for n, t in POSITION]), as_json


def export_topic(bootstrap: str, topic: str, out: Path, idle_exit_s: float) -> dict[str, int]:
    """Write `<out>/<topic>.parquet` and `.csv`; rows written and records skipped."""
    avsc_path = AVSC / f"{TOPICS[topic]}.avsc"
    decoder = Decoder(avsc_path)
    schema, as_json = arrow_schema(json.loads(avsc_path.read_text()))
    rows: list[dict[str, Any]] = []
    skipped = 0
    for msg in records(bootstrap, topic, idle_exit_s):
        row = decoder.decode(msg.value())
        if row is None:
            skipped += 1
            continue
        for name in as_json:
            row[name] = json.dumps(row[name])
        rows.append({**row, "partition": msg.partition(), "offset": msg.offset(), "kafka_ts": msg.timestamp()[1]})
    write_files(rows, schema, out, topic)
    return {"rows": len(rows), "skipped": skipped}


def write_files(rows: list[dict[str, Any]], schema: pyarrow.Schema, out: Path, topic: str) -> None:
    """`<out>/<topic>.parquet` and `<out>/<topic>.csv` of `rows`."""
    out.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=schema), out / f"{topic}.parquet")
    with (out / f"{topic}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=schema.names)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--topic", action="append", choices=sorted(TOPICS), default=None)
    p.add_argument("--idle-exit-s", type=float, default=5.0)
    args = p.parse_args(argv)
    for topic in args.topic or sorted(TOPICS):
        done = export_topic(args.bootstrap, topic, args.out, args.idle_exit_s)
        print(f"{topic}: {done['rows']} rows to {args.out}/{topic}.parquet and .csv, {done['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
