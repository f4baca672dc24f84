"""Dead letters: list every dead-letter topic, show its letters decoded, redrive them.

`redrive` takes a topic's pending letters (those past the redrive group's committed offset), checks
each payload again as its source topic's record (decodes with the current schemas, passes the
Record's range checks, a ping on its driver's partition), re-produces what passes to the source
topic and partition with a header naming the letter's original topic, partition and offset, and
puts what still fails back on the dead-letter topic with the new reason. Then it commits the group
past the letters it took, so a letter re-enters its topic once; a refused one is pending again,
with its reason, for a redrive after the fix.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Type

import faust
from confluent_kafka import Producer, TopicPartition

from agents.ops.catalog import spec_of
from agents.ops.decode import AvscDecoder, decoded, shown
from agents.ops.errors import OpsError
from agents.ops.kafka import committed, consumer, read_span, spans, watermarks
from infra.settings import Settings
from schemas import records
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.topics import DISPATCH_DLQ, FEATURES_DLQ, LOCATIONS, LOCATIONS_DLQ, ORDERS_DLQ
from schemas.validation import range_errors

__all__ = ["DLQS", "REDRIVEN_FROM", "dlq_list", "redrive", "show"]

DLQS = (LOCATIONS_DLQ.name, DISPATCH_DLQ.name, FEATURES_DLQ.name, ORDERS_DLQ.name)
REDRIVEN_FROM = "livetrack-redriven-from"  # header: "<topic>:<partition>:<offset>" of the dead-lettered record
REFUSED = "redrive refused: "


def _group(settings: Settings) -> str:
    return f"{settings.app_id}-redrive"


def _dlq(settings: Settings, name: str) -> str:
    if name not in DLQS:
        raise OpsError(f"no dead-letter topic {name!r} (they are: {', '.join(DLQS)})")
    return settings.topic_prefix + name


def _letters(settings: Settings, topic: str, *, pending_only: bool) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, letter) of `topic`, from the redrive group's offset if `pending_only`."""
    decoder = AvscDecoder(records.DeadLetter.__name__)
    c = consumer(settings.bootstrap)
    try:
        span = spans(c, topic)
        if pending_only:
            done = committed(settings.bootstrap, _group(settings), [(topic, p) for p in span])
            span = {p: (max(a, done[(topic, p)]), b) for p, (a, b) in span.items()}
        return [(m.partition() or 0, m.offset() or 0, decoder.decode(m.value() or b""))
                for msgs in read_span(c, topic, span, timeout_s=60) for m in msgs if m.value() is not None]
    finally:
        c.close()


def dlq_list(settings: Settings) -> list[dict[str, Any]]:
    """Each dead-letter topic: letters kept, pending a redrive, and the commonest reasons."""
    rows = []
    for name in DLQS:
        topic = settings.topic_prefix + name
        letters = _letters(settings, topic, pending_only=False)
        pending = _letters(settings, topic, pending_only=True)
        reasons = Counter(letter["reason"].split(":")[0][:60] for _, _, letter in pending)
        rows.append({"dlq": name, "letters": len(letters), "pending": len(pending),
                     "reasons": dict(reasons.most_common(5))})
    return rows


def show(settings: Settings, name: str, *, limit: int, pending_only: bool = False) -> list[dict[str, Any]]:
    """The last `limit` letters of a dead-letter topic, payloads decoded as their source topic's."""
    out = []
    for partition, offset, letter in _letters(settings, _dlq(settings, name), pending_only=pending_only)[-limit:]:
        source = letter["topic"].rsplit(".", 1)[-1]
        out.append({"partition": partition, "offset": offset, "source": f"{source}:{letter['partition']}:"
                    f"{letter['offset']}", "reason": letter["reason"], "key": letter["key"], "ts": letter["ts"],
                    "value": _payload(source, letter["value"])})
    return out


def _payload(source: str, value: bytes | None) -> Any:
    try:
        return decoded(source, value)
    except (OpsError, ValueError):  # not a declared topic's record: an item of a batch
        try:
            return shown(AvscDecoder(records.LocationEvent.__name__).decode(value or b""))
        except ValueError:
            return value.hex() if value is not None else None


def _checked(record: Type[faust.Record], value: bytes) -> dict[str, Any]:
    """The payload decoded as `record` and range-checked; ValueError naming why not."""
    data: dict[str, Any] = codec_for(record).loads(value)
    errors = range_errors(record, data)
    if errors:
        raise ValueError("; ".join(f"{e.field} {e.reason}" for e in errors))
    return data


def revalidated(source: str, partition: int, value: bytes | None, partitions: int) -> tuple[bytes, int]:
    """What to re-produce for a letter of `source` (value, partition); ValueError when it still fails.

    A ping dead-lettered alone (one item of a batch) goes back as a batch of one, on its driver's partition."""
    if value is None:
        raise ValueError("no payload (a tombstone)")
    spec = spec_of(source)
    if spec.value_type is None:
        raise ValueError(f"{source} carries JSON from outside livetrack; redrive it at its source")
    try:
        data = _checked(spec.value_type, value)
        items = data.get("events") if source == LOCATIONS.name else None
        for item in items or ():
            _checked_item(item, partition, partitions)
        return value, partition
    except ValueError as whole:
        if source != LOCATIONS.name or value[:10] != codec_for(records.LocationEvent).header:
            raise
        ping = _checked(records.LocationEvent, value)  # one ping of a batch: its own reason if any
        batch = codec_for(records.LocationBatch).dumps({"events": [ping]})
        return batch, partition_for(ping["driver_id"], partitions)


def _checked_item(item: dict[str, Any], partition: int, partitions: int) -> None:
    errors = range_errors(records.LocationEvent, item)
    if errors:
        raise ValueError("; ".join(f"{e.field} {e.reason}" for e in errors))
    if partition_for(item["driver_id"], partitions) != partition:
        raise ValueError("driver hashes to another partition")


def redrive(settings: Settings, name: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Redrive the pending letters of dead-letter topic `name` (see the module docstring)."""
    topic = _dlq(settings, name)
    c = consumer(settings.bootstrap)
    try:
        ends = {p: high for p, (_, high) in watermarks(c, topic).items()}
    finally:
        c.close()
    letters = [x for x in _letters(settings, topic, pending_only=True) if x[1] < ends[x[0]]]
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True, "acks": "all",
                         "log_level": 3})
    redriven: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    dlq_codec = codec_for(records.DeadLetter)
    for partition, offset, letter in letters:
        source = letter["topic"].removeprefix(settings.topic_prefix)
        where = f"{letter['topic']}:{letter['partition']}:{letter['offset']}"
        try:
            value, target_partition = revalidated(source, letter["partition"], letter["value"],
                                                  spec_of(source).partition_count(settings.partitions))
        except (ValueError, OpsError) as exc:
            reason = f"{REFUSED}{exc}"
            refused.append({"offset": offset, "source": where, "reason": reason})
            if not dry_run:
                again = {**letter, "reason": reason[:500]}
                producer.produce(topic, dlq_codec.dumps(again), (letter["key"] or "").encode() or None,
                                 partition=partition)
            continue
        redriven.append({"offset": offset, "source": where, "to": f"{letter['topic']}:{target_partition}"})
        if not dry_run:
            producer.produce(letter["topic"], value, (letter["key"] or "").encode() or None,
                             partition=target_partition, headers=[(REDRIVEN_FROM, where.encode())])
    if not dry_run:
        if producer.flush(30) > 0:
            raise OpsError("redriven records were not all acked within 30 s; nothing committed, run it again")
        _commit(settings, topic, ends)
    return {"dlq": name, "redriven": redriven, "refused": refused, "dry_run": dry_run}


def _commit(settings: Settings, topic: str, ends: dict[int, int]) -> None:
    c = consumer(settings.bootstrap, _group(settings))
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False)
    finally:
        c.close()
