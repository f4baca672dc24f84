"""Topic values decoded with nothing but the `.avsc` files (every kept version, by fingerprint)."""
from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any

import fastavro
from fastavro.types import Schema

from agents.ops.catalog import spec_of
from schemas import records
from schemas.avro import AVSC_DIR, HISTORY_DIR, codec_for, read_history

__all__ = ["AvscDecoder", "decoded", "shown"]


class AvscDecoder:
    """Single-object Avro of record `name`: read with the writer's kept version (`avsc/history/`) into
    the current one (its published `.avsc`, or for a table's value the kept version the code writes)."""

    def __init__(self, name: str) -> None:
        self.name = name
        kept = read_history(name, HISTORY_DIR)
        self.writers = {fp: fastavro.parse_schema(s) for fp, s in kept.items()}
        published = AVSC_DIR / f"{name}.avsc"
        if published.exists():
            self.reader: Schema = fastavro.parse_schema(json.loads(published.read_text()))
        else:
            self.reader = self.writers[codec_for(getattr(records, name)).header[2:10]]

    def decode(self, value: bytes) -> Any:
        """The record; ValueError when the bytes are no kept version of it."""
        writer = self.writers.get(value[2:10]) if value[:2] == b"\xc3\x01" else None
        if writer is None:
            raise ValueError(f"not a {self.name} record of any kept version")
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), writer, self.reader)


@lru_cache(maxsize=None)
def _decoder(name: str) -> AvscDecoder:
    return AvscDecoder(name)


def decoded(topic: str, value: bytes | None) -> Any:
    """A value of declared `topic` (named without prefix) as JSON-able data; undecodable: its hex."""
    if value is None:
        return None
    spec = spec_of(topic)
    try:
        if spec.value_type is None:
            return json.loads(value)
        return shown(_decoder(spec.value_type.__name__).decode(value))
    except ValueError:
        return {"undecodable": value.hex()}


def shown(value: Any) -> Any:
    """Bytes inside a record (a dead letter's payload) as hex, so the whole is JSON."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    return value
