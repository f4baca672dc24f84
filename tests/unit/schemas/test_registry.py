"""schemas.registry: the kept versions (history), `export`, and the check that old versions still read."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any, Type

import faust
import pytest
from fastavro import parse_schema, schemaless_writer

from schemas import records
from schemas.avro import AVSC_DIR, HISTORY_DIR, avro_schema, codec_for, schema_fingerprint
from schemas.records import PUBLISHED_RECORDS, CellDrivers, CellLatest, CellPane, DriverState, Ride, Watermark
from schemas.registry import RECORDS, _generated, export, incompatibilities, write_history
from schemas.typegen import TYPED_PATH
from tests.unit.schemas.test_avro import SAMPLES

KEPT = sorted(HISTORY_DIR.glob("*/*.avsc"))
BY_NAME = {r.__name__: r for r in RECORDS}


def _versions() -> tuple[Type[faust.Record], Type[faust.Record]]:
    """Two versions of a test-only record `Thing`: the second adds a field with a default."""

    class Thing(faust.Record, namespace="livetrack.tests.ThingV1", include_metadata=False):
        a: int

    first = Thing

    class Thing(faust.Record, namespace="livetrack.tests.ThingV2", include_metadata=False):  # type: ignore[no-redef]
        a: int
        b: int = 0

    return first, Thing


THING_V1, THING_V2 = _versions()


# --- what is kept ----------------------------------------------------------------------------------


def test_records_are_every_record_declared_in_records() -> None:
    declared = {v for k, v in vars(records).items()
                if isinstance(v, type) and issubclass(v, faust.Record) and not k.startswith("_")}
    assert set(RECORDS) == declared
    missing = sorted(r.__name__ for r in declared - set(SAMPLES))
    assert not missing, f"give {missing} a sample in SAMPLES (tests/unit/schemas/test_avro.py)"
    assert set(PUBLISHED_RECORDS) | {DriverState, Ride, CellDrivers, CellPane, CellLatest, Watermark} <= set(RECORDS)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_the_current_version_of_every_record_is_kept(record: Type[faust.Record]) -> None:
    """A Record changed without `livetrack schemas export` has no history file: this fails."""
    path = HISTORY_DIR / record.__name__ / f"{codec_for(record).header[2:].hex()}.avsc"
    assert path.exists(), f"{record.__name__} changed: run `livetrack schemas export` and commit {path.name}"


@pytest.mark.parametrize("path", KEPT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_kept_version_is_named_by_its_record_and_fingerprint(path: Path) -> None:
    schema = json.loads(path.read_text())
    assert (schema["name"], schema_fingerprint(schema).hex()) == (path.parent.name, path.stem)


@pytest.mark.parametrize("path", KEPT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_kept_version_reads_with_the_current_schema(path: Path) -> None:
    """Records written before a change must still decode: a new field needs a default, types only widen."""
    record = BY_NAME.get(path.parent.name)
    assert record is not None, f"{path.parent} is kept for a record schemas.records no longer declares"
    problems = incompatibilities(json.loads(path.read_text()), avro_schema(record))
    assert problems == [], f"{record.__name__} cannot read records written with its version {path.stem}: {problems}"


@pytest.mark.parametrize("path", KEPT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_codec_decodes_every_kept_version(path: Path) -> None:
    old = parse_schema(json.loads(path.read_text()))
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + bytes.fromhex(path.stem))
    (datum,) = _generated(old, 1, seed=0)
    schemaless_writer(buf, old, datum)
    decoded = codec_for(BY_NAME[path.parent.name]).loads(buf.getvalue())
    assert list(decoded) == [f["name"] for f in avro_schema(BY_NAME[path.parent.name])["fields"]]


# --- writing history and export ---------------------------------------------------------------------


def test_write_history_keeps_a_version_once(tmp_path: Path) -> None:
    path = write_history(DriverState, tmp_path)
    assert path == tmp_path / "DriverState" / f"{codec_for(DriverState).header[2:].hex()}.avsc"
    assert json.loads(path.read_text()) == avro_schema(DriverState)
    path.write_text(path.read_text() + " ")  # a kept file is never rewritten
    assert write_history(DriverState, tmp_path) is None
    assert path.read_text().endswith(" ")


def test_write_history_adds_a_file_when_the_record_changed(tmp_path: Path) -> None:
    first, second = write_history(THING_V1, tmp_path), write_history(THING_V2, tmp_path)
    assert first is not None and second is not None and first != second
    assert sorted(p.name for p in (tmp_path / "Thing").iterdir()) == sorted([first.name, second.name])


def test_export_writes_the_current_files_and_only_new_versions(tmp_path: Path) -> None:
    avsc, history, typed = tmp_path / "avsc", tmp_path / "history", tmp_path / "typed.py"
    avsc.mkdir()
    (history / "Gone").mkdir(parents=True)
    (history / "Gone" / "0000000000000000.avsc").write_text("{}")
    written = export(avsc, history, typed)
    assert written[:len(PUBLISHED_RECORDS)] == [avsc / f"{r.__name__}.avsc" for r in PUBLISHED_RECORDS]
    assert len(written) == len(PUBLISHED_RECORDS) + len(RECORDS) + 1 and written[-1] == typed
    assert export(avsc, history, typed) == written[:len(PUBLISHED_RECORDS)]  # nothing new to keep
    assert (history / "Gone" / "0000000000000000.avsc").read_text() == "{}"  # never deleted


def test_export_reproduces_the_checked_in_files(tmp_path: Path) -> None:
    (tmp_path / "avsc").mkdir()
    export(tmp_path / "avsc", tmp_path / "history", tmp_path / "typed.py")
    for path in (tmp_path / "avsc").glob("*.avsc"):
        assert path.read_text() == (AVSC_DIR / path.name).read_text(), path.name
    for path in (tmp_path / "history").glob("*/*.avsc"):
        assert path.read_text() == (HISTORY_DIR / path.parent.name / path.name).read_text(), path.name
    assert (tmp_path / "typed.py").read_text() == TYPED_PATH.read_text()


# --- the check itself -------------------------------------------------------------------------------

STATUS = {"type": "enum", "name": "Status", "symbols": ["A", "B", "C"]}
BASE: dict[str, Any] = {"type": "record", "name": "Thing", "namespace": "livetrack.tests", "fields": [
    {"name": "id", "type": "string"},
    {"name": "n", "type": "long"},
    {"name": "count", "type": "int"},
    {"name": "status", "type": STATUS},
    {"name": "maybe", "type": ["null", "long"], "default": None},
    {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item", "fields": [
        {"name": "size", "type": "long"}]}}},
]}


def _changed(field: str, **change: Any) -> dict[str, Any]:
    """BASE with one field changed (`type=...`), removed (no change) or added (a new name)."""
    fields = [f for f in BASE["fields"] if f["name"] != field]
    if change:
        fields.append({"name": field, **change})
    return {**BASE, "fields": fields}


@pytest.mark.parametrize(("new", "says"), [
    (_changed("extra", type="string"), "No default value for field extra"),
    (_changed("n", type="int"), "long is not int (changed: n)"),
    (_changed("maybe", type=["null", "int"], default=None), "(changed: maybe)"),
    (_changed("status", type={**STATUS, "symbols": ["A", "B"]}), "enum livetrack.tests.Status no longer has C"),
    (_changed("items", type={"type": "array", "items": {"type": "record", "name": "Item", "fields": [
        {"name": "size", "type": "long"}, {"name": "weight", "type": "double"}]}}), "No default value for field weight"),
], ids=["new field without default", "long to int", "optional long to int", "enum symbol removed",
        "nested new field without default"])
def test_the_check_refuses_an_incompatible_change(new: dict[str, Any], says: str) -> None:
    problems = incompatibilities(BASE, new)
    assert problems and any(says in p for p in problems), problems


@pytest.mark.parametrize("new", [
    BASE,
    _changed("extra", type="string", default=""),
    _changed("later", type=["null", "string"], default=None),
    _changed("n"),
    _changed("count", type="long"),
    _changed("status", type={**STATUS, "symbols": ["A", "B", "C", "D"]}),
    _changed("status", type={**STATUS, "symbols": ["A", "B"], "default": "A"}),
], ids=["unchanged", "new field with default", "new optional field", "field removed", "int to long",
        "enum symbol added", "enum symbol removed with a default"])
def test_the_check_accepts_a_compatible_change(new: dict[str, Any]) -> None:
    assert incompatibilities(BASE, new) == []


def test_a_record_changed_without_a_default_fails_naming_the_record_and_the_field() -> None:
    current = avro_schema(DriverState)
    changed = {**current, "fields": current["fields"] + [{"name": "added_field", "type": "string"}]}
    assert incompatibilities(current, changed) == ["No default value for field added_field in livetrack.DriverState"]


def test_the_check_is_seeded_and_leaves_random_as_it_was() -> None:
    random.seed(7)
    expected = random.random()
    random.seed(7)
    assert incompatibilities(BASE, _changed("n", type="int"), seed=3) == incompatibilities(
        BASE, _changed("n", type="int"), seed=3)
    assert random.random() == expected
