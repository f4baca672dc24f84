"""The kept schema versions: what `livetrack schemas export` writes, and the compatibility check.

`avsc/<Name>.avsc` is the current schema of each published record (for analytics consumers);
`avsc/history/<Name>/<fingerprint hex>.avsc` keeps every version of every record ever exported,
so a reader decodes records written before a change (`schemas.avro.AvroCodec`). History is
append-only: a version is written once, under the fingerprint of its parsing canonical form,
and never rewritten or deleted.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any, Type

import faust
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import expand_schema, to_parsing_canonical_form
from fastavro.types import NamedSchemas, Schema
from fastavro.utils import generate_many

from schemas import records
from schemas.avro import AVSC_DIR, HISTORY_DIR, avro_schema, schema_fingerprint, write_avsc
from schemas.typegen import TYPED_PATH, typed_source

__all__ = ["RECORDS", "export", "incompatibilities", "write_history"]

# Every Record declared in schemas.records: each is on a topic, in a table, or inside one that is,
# and some have codecs of their own (a dead-lettered LocationEvent), so each keeps its versions.
RECORDS: tuple[Type[faust.Record], ...] = tuple(
    r for r in (getattr(records, name) for name in records.__all__)
    if isinstance(r, type) and issubclass(r, faust.Record)
)


def write_history(record: Type[faust.Record], directory: Path = HISTORY_DIR) -> Path | None:
    """Keep the record's current schema as `<Name>/<fingerprint hex>.avsc`; None if already kept."""
    schema = avro_schema(record)
    path = directory / record.__name__ / f"{schema_fingerprint(schema).hex()}.avsc"
    if path.exists():  # same fingerprint, same wire schema: only docs or defaults can differ
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=2) + "\n")
    return path


def export(avsc_dir: Path = AVSC_DIR, history_dir: Path = HISTORY_DIR, typed_path: Path = TYPED_PATH) -> list[Path]:
    """Write the published records' current .avsc, keep every new version, regenerate typed.py.

    Returns the files written; history files already kept are left as they are.
    """
    written = [write_avsc(record, avsc_dir) for record in records.PUBLISHED_RECORDS]
    written += [path for record in RECORDS if (path := write_history(record, history_dir)) is not None]
    source = typed_source(RECORDS)
    if not typed_path.exists() or typed_path.read_text() != source:
        typed_path.write_text(source)
        written.append(typed_path)
    return written


def _generated(schema: Schema, count: int, seed: int) -> list[Any]:
    """`count` arbitrary records of `schema`, the same for the same seed; random's state is kept."""
    state = random.getstate()  # generate_many draws from the module-level generator
    random.seed(seed)
    try:
        return list(generate_many(schema, count))
    finally:
        random.setstate(state)


def _enums(schema: Schema) -> dict[str, dict[str, Any]]:
    named: NamedSchemas = {}
    parse_schema(schema, named_schemas=named)
    return {name: s for name, s in named.items() if isinstance(s, dict) and s["type"] == "enum"}


def _removed_symbols(old: Schema, new: Schema) -> list[str]:
    """Enum symbols `old` can write that `new` cannot read (random data might not draw them)."""
    problems = []
    new_enums = _enums(new)
    for name, enum in _enums(old).items():
        current = new_enums.get(name)
        if current is None or "default" in current:
            continue  # a renamed or dropped enum fails on the data; a default takes unknown symbols
        removed = [s for s in enum["symbols"] if s not in current["symbols"]]
        if removed:
            problems.append(f"enum {name} no longer has {', '.join(removed)} and has no default")
    return problems


def _changed_fields(old: Schema, new: Schema) -> list[str]:
    """Fields of both schemas whose types differ, named types inlined: where a mismatch comes from."""
    def types(schema: Schema) -> dict[str, str]:
        expanded: Any = expand_schema(schema)
        return {f["name"]: to_parsing_canonical_form(f["type"]) for f in expanded["fields"]}

    before, after = types(old), types(new)
    return [name for name, t in before.items() if name in after and after[name] != t]


def incompatibilities(old: Schema, new: Schema, *, count: int = 100, seed: int = 0) -> list[str]:
    """Why records written with `old` would not read with `new` (Avro schema resolution); [] if none.

    Writes `count` records generated from `old` (seeded) and reads each with `new` as the
    reader's schema, as `AvroCodec` does for a kept version.
    """
    problems = _removed_symbols(old, new)
    writer, reader = parse_schema(old), parse_schema(new)
    for datum in _generated(writer, count, seed):
        buf = io.BytesIO()
        schemaless_writer(buf, writer, datum)
        buf.seek(0)
        try:
            schemaless_reader(buf, writer, reader)
        except SchemaResolutionError as e:
            # fastavro names the field only when a default is missing; a type mismatch gets the
            # fields whose types changed.
            changed = _changed_fields(old, new)
            problems.append(f"{e} (changed: {', '.join(changed)})" if changed else str(e))
    return list(dict.fromkeys(problems))
