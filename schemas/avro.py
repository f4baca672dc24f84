"""Avro schemas derived from the Records, and the Faust codec that uses them.

Wire format: Avro single-object encoding (C3 01, 8-byte little-endian
CRC-64-AVRO fingerprint, body), so a consumer holding only the `.avsc` can
check it has the right schema and decode with fastavro.
"""
from __future__ import annotations

import io
import json
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Type

import faust
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from faust.serializers.codecs import Codec

from schemas.records import ChoiceField

__all__ = ["AVSC_DIR", "AvroCodec", "SchemaMismatch", "avro_schema", "codec_for", "write_avsc"]

AVSC_DIR = Path(__file__).parent / "avsc"
MAGIC = b"\xc3\x01"
_PRIMITIVES: dict[Any, str] = {str: "string", int: "long", float: "double", bool: "boolean", bytes: "bytes"}


class SchemaMismatch(ValueError):
    """Bytes that are not this schema's single-object encoding."""


def _field_type(annotation: Any, descriptor: Any, named: set[str]) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return ["null", _field_type(inner, descriptor, named)]
    if origin in (dict, typing.Dict):
        return {"type": "map", "values": _field_type(args[1], None, named)}
    if origin in (list, typing.List):
        return {"type": "array", "items": _field_type(args[0], None, named)}
    if isinstance(annotation, type) and issubclass(annotation, faust.Record):
        return _record_schema(annotation, named)
    if isinstance(descriptor, ChoiceField):
        if descriptor.enum_name in named:  # Avro names are defined once per schema
            return f"livetrack.{descriptor.enum_name}"
        named.add(descriptor.enum_name)
        return {"type": "enum", "name": descriptor.enum_name, "namespace": "livetrack",
                "symbols": list(descriptor.choices)}
    return _PRIMITIVES[annotation]


def _record_schema(record: Type[faust.Record], named: set[str]) -> Any:
    opts = record._options
    if opts.namespace in named:  # Avro names are defined once per schema
        return opts.namespace
    named.add(opts.namespace)
    fields = []
    for name, annotation in opts.fields.items():
        field: dict[str, Any] = {"name": name, "type": _field_type(annotation, opts.descriptors.get(name), named)}
        if name in opts.defaults:
            field["default"] = opts.defaults[name]
        fields.append(field)
    namespace, _, short = opts.namespace.rpartition(".")
    schema: dict[str, Any] = {"type": "record", "name": short, "namespace": namespace, "fields": fields}
    if record.__doc__:
        schema["doc"] = " ".join(record.__doc__.split())
    return schema


def avro_schema(record: Type[faust.Record]) -> dict[str, Any]:
    """The Avro record schema of a Faust Record, field order as declared, nested records inlined."""
    return _record_schema(record, set())  # type: ignore[no-any-return]


def write_avsc(record: Type[faust.Record], directory: Path = AVSC_DIR) -> Path:
    """Write the record's schema as `<Name>.avsc` (the file analytics consumers read)."""
    path = directory / f"{record.__name__}.avsc"
    path.write_text(json.dumps(avro_schema(record), indent=2) + "\n")
    return path


class AvroCodec(Codec):
    """Faust codec: dict <-> Avro single-object encoding of one Record's schema."""

    def __init__(self, record: Type[faust.Record], **kwargs: Any) -> None:
        super().__init__(record=record, **kwargs)
        self.record = record
        self.parsed = parse_schema(avro_schema(record))
        # fastavro's hex is already the fingerprint's little-endian bytes, as the spec writes them.
        self.header = MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(self.parsed), "CRC-64-AVRO"))

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, faust.Record):
            obj = obj.asdict()
        buf = io.BytesIO()
        buf.write(self.header)
        schemaless_writer(buf, self.parsed, obj)
        return buf.getvalue()

    def _loads(self, s: bytes) -> Any:
        if s[:10] != self.header:
            raise SchemaMismatch(f"not a {self.record.__name__} single-object Avro record")
        return schemaless_reader(io.BytesIO(s[10:]), self.parsed, None)

    def clone(self, *children: Codec) -> Codec:  # Codec.clone would drop `record`
        return type(self)(self.record, children=self.children + children)


@lru_cache(maxsize=None)
def codec_for(record: Type[faust.Record]) -> AvroCodec:
    """One codec instance per record type."""
    return AvroCodec(record)
