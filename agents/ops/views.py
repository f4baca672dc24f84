"""Read-only operator views: consumer lag per group and partition, tables with a decoded key lookup, tail."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from confluent_kafka import TopicPartition

from agents.ops.catalog import TABLES, changelog, table_record
from agents.ops.decode import AvscDecoder, decoded, shown
from agents.ops.errors import OpsError
from agents.ops.kafka import committed, consumer, read_span, spans, watermarks
from agents.ops.replay import consumed
from infra.settings import Settings

__all__ = ["lag", "lookup", "table_list", "tail"]


def lag(settings: Settings, app_id: str, prefix: str, groups: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows of group, topic, partition, committed, end, lag: the feed's group and Faust's, and `groups`
    (every partition of every topic each has committed)."""
    c = consumer(settings.bootstrap)
    rows = []
    try:
        wanted = [(g, [pre + t for t in topics]) for g, pre, topics in consumed(app_id, prefix)]
        wanted += [(g, _topics_of(settings, g)) for g in groups]
        for group, topics in wanted:
            marks = {(t, p): lh for t in topics for p, lh in watermarks(c, t).items()}
            done = committed(settings.bootstrap, group, list(marks))
            for (topic, p), (low, high) in sorted(marks.items()):
                at = done.get((topic, p), -1)
                rows.append({"group": group, "topic": topic, "partition": p, "committed": at, "end": high,
                             "lag": max(0, high - max(low, at))})
        return rows
    finally:
        c.close()


def _topics_of(settings: Settings, group: str) -> list[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    [result] = admin.list_consumer_group_offsets([_request(group)], request_timeout=10).values()
    return sorted({tp.topic for tp in result.result().topic_partitions})


def _request(group: str) -> Any:
    from confluent_kafka import ConsumerGroupTopicPartitions

    return ConsumerGroupTopicPartitions(group)


def table_list(settings: Settings, app_id: str) -> list[dict[str, Any]]:
    """Each table: its changelog, partitions and the records the changelog holds."""
    c = consumer(settings.bootstrap)
    try:
        rows = []
        for name, record in TABLES.items():
            topic = changelog(app_id, name)
            try:
                marks = watermarks(c, topic)
            except OpsError:
                marks = {}
            rows.append({"table": name, "value": record.__name__, "changelog": topic, "partitions": len(marks),
                         "records": sum(high - low for low, high in marks.values())})
        return rows
    finally:
        c.close()


def lookup(settings: Settings, app_id: str, table: str, key: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The latest value of `key` in `table` decoded with its `.avsc`, and where it is in the changelog."""
    decoder = AvscDecoder(table_record(table).__name__)
    topic = changelog(app_id, table)
    c = consumer(settings.bootstrap)
    found: dict[str, Any] = {"table": table, "key": key, "found": False}
    wanted = key.encode()
    try:
        for msgs in read_span(c, topic, spans(c, topic), timeout_s=timeout_s):
            for m in msgs:
                if m.key() == wanted:
                    value = m.value()
                    found.update(found=value is not None, partition=m.partition(), offset=m.offset(),
                                 value=shown(decoder.decode(value)) if value is not None else None)
        return found
    finally:
        c.close()


def tail(settings: Settings, topic: str, *, last: int, follow_s: float, prefix: str = "",
         out: Callable[[dict[str, Any]], None]) -> int:
    """The last `last` records of each partition of `topic`, then (for `follow_s` seconds) what comes;
    each decoded with the `.avsc` and handed to `out`; how many."""
    name = prefix + topic
    c = consumer(settings.bootstrap)
    count = 0
    try:
        marks = watermarks(c, name)
        span = {p: (max(low, high - last), high) for p, (low, high) in marks.items()}
        for msgs in read_span(c, name, span, timeout_s=60):
            for m in msgs:
                out(_row(topic, m))
                count += 1
        if follow_s > 0:
            count += _follow(c, topic, name, marks, follow_s, out)
        return count
    finally:
        c.close()


def _follow(c: Any, topic: str, name: str, marks: dict[int, tuple[int, int]], follow_s: float,
            out: Callable[[dict[str, Any]], None]) -> int:
    c.assign([TopicPartition(name, p, high) for p, (_, high) in marks.items()])
    count = 0
    deadline = time.monotonic() + follow_s
    while time.monotonic() < deadline:
        for m in c.consume(500, timeout=0.5):
            if m.error() is None:
                out(_row(topic, m))
                count += 1
    return count


def _row(topic: str, m: Any) -> dict[str, Any]:
    key = m.key()
    return {"partition": m.partition(), "offset": m.offset(), "ts": m.timestamp()[1],
            "key": key.decode(errors="replace") if key is not None else None, "value": decoded(topic, m.value())}


def rows_text(rows: list[dict[str, Any]], columns: list[str]) -> Iterator[str]:
    """Rows as an aligned text table."""
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    yield "  ".join(c.ljust(widths[c]) for c in columns).rstrip()
    for r in rows:
        yield "  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip()
