"""Avro schemas derived from the Records, and the Faust codec that uses them.

Wire format: Avro single-object encoding (C3 01, 8-byte little-endian
CRC-64-AVRO fingerprint, body), so a consumer holding only the `.avsc` can
check it has the right schema and decode with fastavro. Writers always write
the current schema; readers also decode every version kept in `avsc/history/`.
"""
from __future__ import annotations

import copy
import io
import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Mapping, Type

import faust
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.types import Schema
from faust.serializers.codecs import Codec
from faust.types.codecs import CodecT
from typing_extensions import TypeVar

from schemas.records import ChoiceField

__all__ = [
    "AVSC_DIR", "HISTORY_DIR", "AvroCodec", "SchemaMismatch", "avro_schema", "codec_for", "read_history",
    "schema_fingerprint", "typed_codec", "write_avsc",
]

AVSC_DIR = Path(__file__).parent / "avsc"
# Every version ever exported: history/<Name>/<fingerprint hex>.avsc, the hex being header bytes 2-10.
HISTORY_DIR = AVSC_DIR / "history"
MAGIC = b"\xc3\x01"
_PRIMITIVES: dict[Any, str] = {str: "string", int: "long", float: "double", bool: "boolean", bytes: "bytes"}

# What `loads` returns; a bare `AvroCodec` (an annotation, a direct AvroCodec(record)) is AvroCodec[Any].
T = TypeVar("T", bound=Mapping[str, Any], default=Any)


class SchemaMismatch(ValueError):
    """Bytes that are not the single-object encoding of any kept version of this schema."""


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


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8 bytes a single-object record of `schema` carries after C3 01 (CRC-64-AVRO, little-endian)."""
    # fastavro's hex is already the fingerprint's little-endian bytes, as the spec writes them.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def read_history(name: str, directory: Path = HISTORY_DIR) -> dict[bytes, dict[str, Any]]:
    """Every kept version of record `name`'s schema, raw JSON, by fingerprint."""
    kept = (json.loads(path.read_text()) for path in sorted((directory / name).glob("*.avsc")))
    return {schema_fingerprint(schema): schema for schema in kept}


def _has_mutable_default(schema: Any) -> bool:
    """Whether any field of `schema`, at any depth, defaults to a list or a dict."""
    if isinstance(schema, list):
        return any(_has_mutable_default(s) for s in schema)
    if not isinstance(schema, dict):
        return False
    if isinstance(schema.get("default"), (list, dict)):
        return True
    return any(_has_mutable_default(v) for k, v in schema.items() if k != "default")


class AvroCodec(Codec, Generic[T]):
    """Faust codec: dict <-> Avro single-object encoding of one Record's schema.

    `T` is what `loads` returns: the Record's TypedDict in `schemas.typed`.
    """

    def __init__(self, record: Type[faust.Record], history: Path = HISTORY_DIR, **kwargs: Any) -> None:
        super().__init__(record=record, **kwargs)
        self.record = record
        self.history = history
        self.parsed = parse_schema(avro_schema(record))
        self.header = MAGIC + schema_fingerprint(self.parsed)
        self._writers: dict[bytes, Schema] | None = None  # older versions, parsed on first use
        self._copy_defaults = _has_mutable_default(self.parsed)

    if TYPE_CHECKING:  # the types Codec's own dumps and loads take and give, for this record
        def dumps(self, obj: T | dict[str, Any] | faust.Record) -> bytes: ...

        def loads(self, s: bytes) -> T: ...

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, faust.Record):
            obj = obj.asdict()
        buf = io.BytesIO()
        buf.write(self.header)
        schemaless_writer(buf, self.parsed, obj)
        return buf.getvalue()

    def _loads(self, s: bytes) -> Any:
        if s[:10] == self.header:  # the hot path: written by this version
            return schemaless_reader(io.BytesIO(s[10:]), self.parsed, None)
        return self._resolve(s)

    def _resolve(self, s: bytes) -> Any:
        """Decode a record written with a kept older version, resolved to the current schema."""
        if s[:2] != MAGIC:
            raise SchemaMismatch(f"not a {self.record.__name__} single-object Avro record")
        if self._writers is None:
            self._writers = {fp: parse_schema(schema) for fp, schema in read_history(
                self.record.__name__, self.history).items()}
        writer = self._writers.get(s[2:10])
        if writer is None:
            raise SchemaMismatch(f"not a {self.record.__name__} single-object Avro record: "
                                 f"no kept schema has fingerprint {s[2:10].hex()}")
        try:
            value = schemaless_reader(io.BytesIO(s[10:]), writer, self.parsed)
        except SchemaResolutionError as e:  # a kept version the unit tests would have refused
            raise SchemaMismatch(f"{self.record.__name__} cannot read its version {s[2:10].hex()}: {e}") from e
        # fastavro fills a field the writer lacked with the reader schema's own default object:
        # a caller appending to that list would change the default of every later record.
        return copy.deepcopy(value) if self._copy_defaults else value

    def clone(self, *children: CodecT) -> AvroCodec[T]:  # Codec.clone would drop `record`
        return type(self)(self.record, self.history, children=self.children + children)


_CODECS: dict[Type[faust.Record], AvroCodec[Any]] = {}


def codec_for(record: Type[faust.Record]) -> AvroCodec[Any]:
    """One codec instance per record type; `loads` gives a plain dict (see `typed_codec`)."""
    codec = _CODECS.get(record)
    if codec is None:
        codec = _CODECS[record] = AvroCodec(record)
    return codec


def typed_codec(record: Type[faust.Record], shape: type[T]) -> AvroCodec[T]:
    """`codec_for(record)`, typed: `loads` gives `shape`, the record's TypedDict in `schemas.typed`.

    faust's Record classes are `Any` to mypy, so the record cannot pick the type by itself;
    a `shape` that is not this record's TypedDict is refused here, once, when the codec is made.
    """
    fields = getattr(shape, "__annotations__", {})
    if shape.__name__ != record.__name__ or list(fields) != list(record._options.fields):
        raise TypeError(f"{shape.__qualname__} is not the TypedDict of {record.__name__}")
    return codec_for(record)
