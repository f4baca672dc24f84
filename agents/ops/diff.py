"""Diff two states: a shadow's tables (and output topics) against live, or two shadows.

A table is read from its changelog (compacted: the last value of a key wins, a tombstone deletes
it), so a running worker's state is read without touching its RocksDB. Values whose bytes are
equal are equal; only the others are decoded, flattened to field paths (`features.surge`,
`tried.0`) and compared field by field, less the fields a side decides from its own clock or log
position (IGNORED), which a replay cannot reproduce.

Output topics are keyed per message: `push` by channel and seq, `cell-features` by cell, window and
finality; a glob (`--match 'driver:*'`) narrows what is compared.
"""
from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Type

import faust

from agents.ops.catalog import TABLES, changelog, table_record
from agents.ops.kafka import consumer, read_span, spans
from schemas import records
from schemas.avro import codec_for
from schemas.topics import CELL_FEATURES, PUSH

__all__ = ["CLOCKED", "IGNORED", "OUTPUTS", "Side", "SideDiff", "compare", "diff", "field_diff", "flatten"]

# Fields a side derives from its own log positions or send times: never compared.
IGNORED: dict[str, tuple[str, ...]] = {
    "ride_to_state": ("applied_offset", "outbox", "outbox.*"),
    "driver_to_outbox": ("decisions.*.ts", "decisions.*.records.*.value"),
    "cell_to_features": ("features.emitted_ts",),
    "order_to_state": ("received_ts", "timeline.*.received_ts"),
    PUSH.name: ("sent_ts",),
    CELL_FEATURES.name: ("emitted_ts",),
}
# Times stamped by the deciding worker's clock: live's is the machine's, a shadow's its input's
# timestamp (infra.clock.InputClock), so they agree within live's processing latency: equal within
# the tolerance.
CLOCKED: dict[str, tuple[str, ...]] = {
    "ride_to_state": ("requested_ts", "updated_ts", "deadline_ms"),
    "cell_to_activity": ("rides.*",),
    "partition_to_watermark": ("ts",),
}
TOLERANCE_MS = 5_000
Keyed = dict[str, bytes]


def _push_key(key: bytes | None, value: Mapping[str, Any]) -> str:
    return f"{value['channel']}#{value['seq']}"


def _features_key(key: bytes | None, value: Mapping[str, Any]) -> str:
    final = "final" if value["final"] else "running"
    return f"{value['cell']}/{value['kind']}/{value['size_s']}/{value['end_ts']}/{final}"


OUTPUTS: dict[str, tuple[Type[faust.Record], Callable[[bytes | None, Mapping[str, Any]], str]]] = {
    PUSH.name: (records.PushMessage, _push_key), CELL_FEATURES.name: (records.CellFeatures, _features_key),
}


@dataclass(frozen=True)
class Side:
    """One side of a diff: a name (`live` or a shadow's), its app id and topic prefix."""

    name: str
    app_id: str
    prefix: str


@dataclass
class SideDiff:
    """One table or topic compared: counts, and a sample of the differences."""

    equal: int = 0
    different: int = 0
    only_left: int = 0
    only_right: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.different or self.only_left or self.only_right)


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """A decoded record as {field path: leaf value}: `a.b` for a nested field, `a.0` for a list item."""
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {path: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{path}.{k}" if path else str(k)))
    if not out and path:
        out[path] = value  # an empty map or list is a value of its own
    return out


def field_diff(left: Any, right: Any, ignored: Sequence[str], clocked: Sequence[str] = (),
               tolerance_ms: int = TOLERANCE_MS) -> dict[str, list[Any]]:
    """{path: [left, right]} of the fields that differ, less those matching an `ignored` glob and
    the `clocked` ones within `tolerance_ms` of each other."""
    a, b = flatten(left), flatten(right)
    return {p: [_shown(a.get(p)), _shown(b.get(p))] for p in sorted(set(a) | set(b))
            if a.get(p) != b.get(p) and not any(fnmatch.fnmatchcase(p, g) for g in ignored)
            and not _close(a.get(p), b.get(p), p, clocked, tolerance_ms)}


def _close(a: Any, b: Any, path: str, clocked: Sequence[str], tolerance_ms: int) -> bool:
    return (isinstance(a, int) and isinstance(b, int) and abs(a - b) <= tolerance_ms
            and any(fnmatch.fnmatchcase(path, g) for g in clocked))


def _shown(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v


def compare(left: Keyed, right: Keyed, decode: Callable[[bytes], Any], ignored: Sequence[str],
            sample: int, clocked: Sequence[str] = (), tolerance_ms: int = TOLERANCE_MS) -> SideDiff:
    """Key by key: equal bytes are equal; otherwise decoded and compared field by field."""
    out = SideDiff()
    for key, lv in left.items():
        rv = right.get(key)
        if rv is None:
            out.only_left += 1
            _sample(out, sample, {"key": key, "only": "left"})
        elif lv == rv:
            out.equal += 1
        else:
            fields = field_diff(decode(lv), decode(rv), ignored, clocked, tolerance_ms)
            if fields:
                out.different += 1
                _sample(out, sample, {"key": key, "fields": fields})
            else:
                out.equal += 1
    for key in right.keys() - left.keys():
        out.only_right += 1
        _sample(out, sample, {"key": key, "only": "right"})
    return out


def _sample(out: SideDiff, limit: int, item: dict[str, Any]) -> None:
    if len(out.samples) < limit:
        out.samples.append(item)


def read_table(bootstrap: str, topic: str, timeout_s: float) -> Keyed:
    """The latest value of every key of a changelog (tombstones delete)."""
    c = consumer(bootstrap)
    values: Keyed = {}
    try:
        for msgs in read_span(c, topic, spans(c, topic), timeout_s=timeout_s):
            for m in msgs:
                key, value = (m.key() or b"").decode(errors="replace"), m.value()
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
        return values
    finally:
        c.close()


def read_output(bootstrap: str, topic: str, match: str, timeout_s: float) -> Keyed:
    """An output topic's messages by message key (OUTPUTS), those matching the `match` glob."""
    record, key_of = OUTPUTS[topic.rsplit(".", 1)[-1]]
    codec = codec_for(record)
    c = consumer(bootstrap)
    values: Keyed = {}
    try:
        for msgs in read_span(c, topic, spans(c, topic), timeout_s=timeout_s):
            for m in msgs:
                value = m.value()
                if value is None:
                    continue
                key = key_of(m.key(), codec.loads(value))
                if fnmatch.fnmatchcase(key, match):
                    values[key] = value
        return values
    finally:
        c.close()


def diff(bootstrap: str, left: Side, right: Side, *, tables: Sequence[str] = tuple(TABLES),
         topics: Sequence[str] = (), match: str = "*", sample: int = 5, timeout_s: float = 120.0,
         extra_ignored: Sequence[str] = (), tolerance_ms: int = TOLERANCE_MS) -> dict[str, Any]:
    """The report: per table and topic the counts and samples; `equal` when all are the same."""
    started = time.perf_counter()
    report: dict[str, Any] = {"left": left.name, "right": right.name, "tolerance_ms": tolerance_ms, "tables": {},
                              "topics": {}}
    keys = 0
    for table in tables:
        codec = codec_for(table_record(table))
        a = read_table(bootstrap, changelog(left.app_id, table), timeout_s)
        b = read_table(bootstrap, changelog(right.app_id, table), timeout_s)
        keys += len(a.keys() | b.keys())
        result = compare(a, b, codec.loads, _ignored(table, extra_ignored), sample, CLOCKED.get(table, ()),
                         tolerance_ms)
        report["tables"][table] = {**asdict(result), "ignored": list(_ignored(table, extra_ignored)),
                                   "clocked": list(CLOCKED.get(table, ()))}
    for topic in topics:
        codec = codec_for(OUTPUTS[topic][0])
        a = read_output(bootstrap, left.prefix + topic, match, timeout_s)
        b = read_output(bootstrap, right.prefix + topic, match, timeout_s)
        keys += len(a.keys() | b.keys())
        result = compare(a, b, codec.loads, _ignored(topic, extra_ignored), sample)
        report["topics"][topic] = {**asdict(result), "match": match, "ignored": list(_ignored(topic, extra_ignored))}
    parts = [*report["tables"].values(), *report["topics"].values()]
    report["equal"] = all(not (p["different"] or p["only_left"] or p["only_right"]) for p in parts)
    report["keys"] = keys
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _ignored(name: str, extra: Sequence[str]) -> tuple[str, ...]:
    """The default globs of `name` plus `table.glob` / `topic.glob` ones given for it."""
    own = tuple(g.split(":", 1)[1] for g in extra if g.split(":", 1)[0] == name)
    return IGNORED.get(name, ()) + own


def as_text(report: Mapping[str, Any]) -> str:
    """The report as a readable table and samples."""
    lines = [f"{report['left']} vs {report['right']}: {'EQUAL' if report['equal'] else 'DIFFERENT'} "
             f"({report['keys']} keys, {report['seconds']} s)",
             f"{'':24} {'equal':>8} {'different':>10} {'only-left':>10} {'only-right':>10}"]
    for kind in ("tables", "topics"):
        for name, r in report[kind].items():
            lines.append(f"{name:24} {r['equal']:8} {r['different']:10} {r['only_left']:10} {r['only_right']:10}")
    for kind in ("tables", "topics"):
        for name, r in report[kind].items():
            for s in r["samples"]:
                if "only" in s:
                    lines.append(f"  {name} {s['key']}: only {s['only']}")
                for path, (a, b) in s.get("fields", {}).items():
                    lines.append(f"  {name} {s['key']} {path}: {json.dumps(a)} != {json.dumps(b)}")
    return "\n".join(lines)
