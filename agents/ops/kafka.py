"""The Kafka reads the operator tools share: watermarks, bounded range reads, committed offsets.

Every read has an end fixed when it starts (the high watermarks then) and a deadline, so a command
never waits on a topic that keeps growing.
"""
from __future__ import annotations

import time
import uuid
from typing import Iterator, Mapping

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from agents.ops.errors import OpsError
from infra.topics import record_position, while_settling

__all__ = ["Span", "committed", "consumer", "partitions", "read_span", "spans", "watermarks"]

Span = dict[int, tuple[int, int]]  # partition -> [start, stop) offsets


def consumer(bootstrap: str, group: str | None = None) -> Consumer:
    """A consumer for assign() reads; `group` only to read or commit that group's offsets."""
    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": group or f"livetrack-ops-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "log_level": 3,
        "fetch.max.bytes": 64 * 1024 * 1024, "queued.max.messages.kbytes": 256 * 1024,
    })


def partitions(c: Consumer, topic: str) -> list[int]:
    """The topic's partitions; OpsError when it does not exist."""
    meta = while_settling(lambda: c.list_topics(topic, timeout=10), f"metadata of {topic}").topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise OpsError(f"no topic {topic}")
    return sorted(meta.partitions)


def watermarks(c: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (low, high): the first offset kept and the offset of the next record."""
    def marks() -> dict[int, tuple[int, int]]:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions(c, topic)}
    return while_settling(marks, f"watermarks of {topic}")


def spans(c: Consumer, topic: str, *, from_ms: int | None = None, to_ms: int | None = None,
          starts: Mapping[int, int] | None = None) -> Span:
    """The [start, stop) offsets of `topic` per partition: from `starts` (explicit offsets), else the
    first record at or after `from_ms`, else everything kept; up to the first record at or after
    `to_ms`, else the end as it is now."""
    marks = watermarks(c, topic)
    first = _at_times(c, topic, marks, from_ms) if from_ms is not None else {p: low for p, (low, _) in marks.items()}
    last = _at_times(c, topic, marks, to_ms) if to_ms is not None else {p: high for p, (_, high) in marks.items()}
    if starts:
        first.update({p: max(marks[p][0], o) for p, o in starts.items() if p in marks})
    return {p: (first[p], max(first[p], last[p])) for p in marks}


def _at_times(c: Consumer, topic: str, marks: Mapping[int, tuple[int, int]], ts: int) -> dict[int, int]:
    found = c.offsets_for_times([TopicPartition(topic, p, ts) for p in marks], timeout=10)
    # -1: no record that late, so the position is the end.
    return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}


def read_span(c: Consumer, topic: str, span: Span, *, timeout_s: float = 120.0,
              batch: int = 5000) -> Iterator[list[Message]]:
    """Batches of the records of `span` (in offset order per partition); OpsError past `timeout_s`."""
    todo = {p: (start, stop) for p, (start, stop) in span.items() if stop > start}
    if not todo:
        return
    c.assign([TopicPartition(topic, p, start) for p, (start, _) in todo.items()])
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if time.monotonic() > deadline:
                raise OpsError(f"reading {topic} took over {timeout_s:.0f} s; {len(todo)} partition(s) unfinished")
            msgs = c.consume(batch, timeout=0.05)  # what is fetched; the position says when a partition is done
            good = []
            for m in msgs:
                if m.error() is not None:
                    continue
                p, offset = record_position(m)
                if p in todo and offset < todo[p][1]:
                    good.append(m)
            if good:
                yield good
            _finished(c, topic, todo)
    finally:
        c.unassign()


def _finished(c: Consumer, topic: str, todo: dict[int, tuple[int, int]]) -> None:
    """Drop the partitions whose position reached their stop (gaps of compaction count as read)."""
    for tp in c.position([TopicPartition(topic, p) for p in list(todo)]):
        if tp.offset >= todo[tp.partition][1]:
            del todo[tp.partition]


def committed(bootstrap: str, group: str, topic_partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The group's committed offsets (-1: none) without joining it."""
    c = consumer(bootstrap, group)
    try:
        got = c.committed([TopicPartition(t, p) for t, p in topic_partitions], timeout=10)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in got}
    except KafkaException as exc:
        raise OpsError(f"committed offsets of {group}: {exc}") from exc
    finally:
        c.close()
