"""Read `cell-features` into a CSV file with nothing but confluent-kafka, fastavro and the .avsc.

    python -m analytics.features_csv --bootstrap 127.0.0.1:19092 --out features.csv \\
        [--schema schemas/avsc/CellFeatures.avsc] [--topic cell-features] [--idle-exit-s 5]

Values are Avro single-object encoded: C3 01, the schema's 8-byte CRC-64-AVRO
fingerprint (little-endian), then the body. A record whose fingerprint is not
the .avsc's is counted and skipped, never guessed at. One CSV row per record:
the schema's fields, then the Kafka partition, offset and log-append time.
Reads the whole topic from the beginning (manual assignment, no consumer
group) and stops once nothing new arrived for --idle-exit-s seconds.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import fastavro
from confluent_kafka import Consumer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

DEFAULT_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "avsc" / "CellFeatures.avsc"
MAGIC = b"\xc3\x01"


class Decoder:
    """Single-object Avro of one schema, from its .avsc."""

    def __init__(self, avsc: Path) -> None:
        self.schema = fastavro.parse_schema(json.loads(avsc.read_text()))
        self.header = MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO"))
        self.fields = [f["name"] for f in self.schema["fields"]]

    def decode(self, value: bytes) -> dict[str, Any] | None:
        """The record, or None when the bytes are not this schema's single-object encoding."""
        if value is None or value[:10] != self.header:
            return None
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), self.schema, None)  # type: ignore[return-value]


def records(bootstrap: str, topic: str, idle_exit_s: float) -> Iterator[Any]:
    """Every message of `topic` from the beginning until it has been idle for `idle_exit_s`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "analytics-features-csv",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])  # 0 = earliest kept
        last = time.monotonic()
        while time.monotonic() - last < idle_exit_s:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                print(f"kafka: {msg.error()}", file=sys.stderr)
                continue
            last = time.monotonic()
            yield msg
    finally:
        consumer.close()


def export(bootstrap: str, topic: str, avsc: Path, out: Path, idle_exit_s: float) -> tuple[int, int]:
    """Write the CSV; (rows written, records skipped)."""
    decoder = Decoder(avsc)
    written = skipped = 0
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*decoder.fields, "partition", "offset", "log_append_ms"])
        for msg in records(bootstrap, topic, idle_exit_s):
            row = decoder.decode(msg.value())
            if row is None:
                skipped += 1
                continue
            writer.writerow([*(row[name] for name in decoder.fields), msg.partition(), msg.offset(),
                             msg.timestamp()[1]])
            written += 1
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA)
    p.add_argument("--topic", default="cell-features")
    p.add_argument("--idle-exit-s", type=float, default=5.0)
    args = p.parse_args(argv)
    written, skipped = export(args.bootstrap, args.topic, args.schema, args.out, args.idle_exit_s)
    print(f"{written} rows written to {args.out}, {skipped} records skipped (other schema)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
