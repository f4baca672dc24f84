"""Replay a range of the live input topics into a shadow: the same agents, an isolated state.

1. The range per input topic and partition, [start, stop), is fixed when the replay is made
   (explicit offsets, from/to timestamps via offsets_for_times, or everything retained) and kept in
   the shadow's manifest.
2. The shadow's topics are created (`<prefix><name>`, declared partitions and config) and a shadow
   worker is started: `faust -A agents.worker worker` with the shadow's app id and prefix and the
   policy overrides, so its consumer groups, changelogs and RocksDB directory are its own.
3. The range is copied into the shadow's input topics, partition for partition, with key, value,
   headers and timestamp, and a header naming the source record. Of the topics the agents also
   write (`ride-commands`, `offers`, `order-events`) only what came from outside is copied: the
   shadow's own agents produce the rest again, under its prefix.
4. The replay ends once every partition is copied to its stop offset and the shadow worker has
   committed everything in its topics (its own feedback included), twice in a row; then the
   worker stops.

A replay killed at any point and run again resumes: the copy from the copy group's committed
offsets (or past the last copied record the shadow's topics hold); the worker from its own. Input
copied twice is a duplicate the agents take as such (delivery is at least once everywhere).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from confluent_kafka import Message, Producer, TopicPartition

from agents.feed import group_id as feed_group
from agents.ops import shadow as shadows
from agents.ops.errors import OpsError
from agents.ops.kafka import Span, committed, consumer, read_span, spans, watermarks
from agents.ops.shadow import Shadow
from infra.processes import Proc, spawn, worker_args
from infra.settings import Settings
from infra.shadow import prefixed_specs
from infra.topics import ensure_topics
from schemas import records
from schemas.avro import codec_for
from schemas.topics import (
    CELL_ACTIVITY, DRIVER_CELLS, LEGACY_ORDER_EVENTS, LOCATIONS, OFFERS, ORDER_EVENTS, RIDE_COMMANDS, RIDES,
)

__all__ = ["FAUST_TOPICS", "FEED_TOPICS", "INPUTS", "REPLAYED_FROM", "Progress", "external", "replay"]

REPLAYED_FROM = "livetrack-replayed-from"  # header of a copied record: "<topic>:<partition>:<offset>"
FEED_TOPICS = (LOCATIONS.name, RIDE_COMMANDS.name, OFFERS.name)  # the feed's group: <app id>-feed
FAUST_TOPICS = (DRIVER_CELLS.name, RIDES.name, CELL_ACTIVITY.name, ORDER_EVENTS.name, LEGACY_ORDER_EVENTS.name)
INPUTS = (LOCATIONS.name, RIDE_COMMANDS.name, OFFERS.name, ORDER_EVENTS.name, LEGACY_ORDER_EVENTS.name)
AGENT_SOURCES = frozenset({"livetrack", "legacy"})  # order events the agents write (courier moves, the bridge)
TAIL_SCAN = 500  # records at the end of a shadow partition searched for the last copied one
Progress = Callable[[dict[str, Any]], None]


def external(topic: str, value: bytes | None) -> bool:
    """Whether a live record came from outside the agents (so a replay copies it): commands the
    agents send carry actor `system`, order events they send the source `livetrack` or `legacy`."""
    if value is None or topic not in (RIDE_COMMANDS.name, OFFERS.name, ORDER_EVENTS.name):
        return True
    try:
        if topic == ORDER_EVENTS.name:
            return codec_for(records.OrderEvent).loads(value)["source"] not in AGENT_SOURCES
        record = records.RideCommand if topic == RIDE_COMMANDS.name else records.OfferCommand
        return bool(codec_for(record).loads(value)["actor"] != "system")
    except Exception:  # undecodable: the shadow's agents dead-letter it as live did
        return True


@dataclass
class Options:
    """What to replay: topics, and either timestamps or explicit start offsets (topic -> partition -> offset)."""

    topics: Sequence[str] = INPUTS
    from_ms: int | None = None
    to_ms: int | None = None
    starts: Mapping[str, Mapping[int, int]] | None = None
    timeout_s: float = 600.0


def replay(settings: Settings, name: str, options: Options, overrides: Mapping[str, Any],
           progress: Progress | None = None) -> Shadow:
    """Make (or resume) shadow `name` and run it over the range; returns its manifest once drained."""
    shadow = _begin(settings, name, options, overrides)
    specs = prefixed_specs(shadow.prefix)
    ensure_topics(settings, specs)
    worker = _start_worker(settings, shadow)
    shadow.worker_pid = worker.pid
    shadows.saved(settings, shadow)
    try:
        deadline = time.monotonic() + options.timeout_s
        for topic, span in sorted(shadow.ranges.items()):
            _copy(settings, shadow, topic, {int(p): (a, b) for p, (a, b) in span.items()}, deadline, progress)
        _wait_drained(settings, shadow, worker, deadline, progress)
    finally:
        worker.stop()
    shadow.status, shadow.finished_ms, shadow.worker_pid = "done", int(time.time() * 1000), 0
    return shadows.saved(settings, shadow)


def _begin(settings: Settings, name: str, options: Options, overrides: Mapping[str, Any]) -> Shadow:
    """The shadow's manifest: a new one with its range fixed now, or the unfinished one to resume."""
    try:
        shadow = shadows.load(settings, name)
    except OpsError:
        shadow = shadows.new_shadow(settings, name, overrides)
        shadows.shadow_settings(settings, shadow)  # overrides refused before anything is made
        shadow.ranges = _ranges(settings, options)
        shadow.status = "replaying"
        return shadows.saved(settings, shadow)
    if shadow.status == "done":
        raise OpsError(f"shadow {name} exists and is complete: diff it, promote it or drop it")
    return shadow


def _ranges(settings: Settings, options: Options) -> dict[str, dict[str, list[int]]]:
    unknown = sorted(set(options.topics) - set(INPUTS))
    if unknown:
        raise OpsError(f"not an input topic: {', '.join(unknown)} (inputs: {', '.join(INPUTS)})")
    c = consumer(settings.bootstrap)
    try:
        out = {}
        for topic in options.topics:
            name = settings.topic_prefix + topic
            span = spans(c, name, from_ms=options.from_ms, to_ms=options.to_ms,
                         starts=(options.starts or {}).get(topic))
            out[topic] = {str(p): [a, b] for p, (a, b) in span.items()}
        return out
    finally:
        c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_worker(settings: Settings, shadow: Shadow) -> Proc:
    shadow.web_port = shadow.web_port or _free_port()
    worker_settings = shadows.shadow_settings(settings, shadow, worker_web_port=shadow.web_port,
                                              worker_instance_id=f"{shadow.app_id}-1", fault_at="")
    (settings.state_dir / "worker").mkdir(parents=True, exist_ok=True)
    return spawn(worker_args(), worker_settings, f"shadow-{shadow.name}")


def _copy_group(shadow: Shadow) -> str:
    return f"{shadow.app_id}-replay"


def _copy(settings: Settings, shadow: Shadow, topic: str, span: Span, deadline: float,
          progress: Progress | None) -> None:
    """Copy `span` of live `topic` into the shadow's, resuming past what an earlier run copied."""
    source, target = settings.topic_prefix + topic, shadow.prefix + topic
    c = consumer(settings.bootstrap, _copy_group(shadow))
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "log_level": 3})
    try:
        todo = _resume(settings, _copy_group(shadow), source, target, span)
        total = sum(b - a for a, b in todo.values())
        done = 0
        for msgs in read_span(c, source, todo, timeout_s=max(1.0, deadline - time.monotonic())):
            shadow.copied += _produce(producer, target, topic, msgs, source)
            done += len(msgs)
            _flush(producer)
            c.commit(offsets=_next(source, msgs), asynchronous=False)
            if progress is not None:
                progress({"phase": "copy", "topic": topic, "read": done, "of": total, "copied": shadow.copied})
        shadows.saved(settings, shadow)
    finally:
        producer.flush(30)
        c.close()


def _produce(producer: Producer, target: str, topic: str, msgs: list[Message], source: str) -> int:
    copied = 0
    for m in msgs:
        value = m.value()
        if not external(topic, value):
            continue
        headers = [*(m.headers() or []), (REPLAYED_FROM, f"{source}:{m.partition()}:{m.offset()}".encode())]
        while True:
            try:
                producer.produce(target, value, m.key(), partition=m.partition() or 0, timestamp=m.timestamp()[1],
                                 headers=headers)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        copied += 1
    return copied


def _flush(producer: Producer) -> None:
    if producer.flush(30) > 0:
        raise OpsError("the shadow's input records were not all acked within 30 s")


def _next(topic: str, msgs: list[Message]) -> list[TopicPartition]:
    last: dict[int, int] = {}
    for m in msgs:
        last[m.partition() or 0] = max(last.get(m.partition() or 0, -1), m.offset() or 0)
    return [TopicPartition(topic, p, o + 1) for p, o in last.items()]


def _resume(settings: Settings, group: str, source: str, target: str, span: Span) -> Span:
    """`span` less what was copied: past the copy group's committed offset, or past the last copied
    record among the last TAIL_SCAN of the shadow's partition (a copy acked but not yet committed)."""
    done = committed(settings.bootstrap, group, [(source, p) for p in span])
    after = _last_copied(settings, target, source)
    return {p: (min(b, max(a, done.get((source, p), -1), after.get(p, -1) + 1)), b) for p, (a, b) in span.items()}


def _last_copied(settings: Settings, target: str, source: str) -> dict[int, int]:
    """Partition -> the highest source offset copied that the shadow's topic still shows near its end."""
    c = consumer(settings.bootstrap)
    try:
        marks = watermarks(c, target)
        tail = {p: (max(low, high - TAIL_SCAN), high) for p, (low, high) in marks.items()}
        found: dict[int, int] = {}
        for msgs in read_span(c, target, tail, timeout_s=30):
            for m in msgs:
                origin = dict(m.headers() or []).get(REPLAYED_FROM)
                if isinstance(origin, bytes):
                    topic, p, offset = origin.decode().rsplit(":", 2)
                    if topic == source:
                        found[int(p)] = max(found.get(int(p), -1), int(offset))
        return found
    finally:
        c.close()


def consumed(shadow_app_id: str, prefix: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(group, topic prefix, topics) a worker of this app id and prefix consumes and commits."""
    return [(feed_group(shadow_app_id), prefix, FEED_TOPICS), (shadow_app_id, prefix, FAUST_TOPICS)]


def lag_of(settings: Settings, app_id: str, prefix: str) -> tuple[int, dict[tuple[str, int], int]]:
    """(total lag, the end offsets) of what a worker of `app_id` consumes under `prefix`."""
    c = consumer(settings.bootstrap)
    total = 0
    ends: dict[tuple[str, int], int] = {}
    try:
        for group, pre, topics in consumed(app_id, prefix):
            marks = {(pre + t, p): lh for t in topics for p, lh in watermarks(c, pre + t).items()}
            done = committed(settings.bootstrap, group, list(marks))
            for tp, (low, high) in marks.items():
                total += max(0, high - max(low, done.get(tp, -1)))
                ends[tp] = high
        return total, ends
    finally:
        c.close()


def _wait_drained(settings: Settings, shadow: Shadow, worker: Proc, deadline: float,
                  progress: Progress | None) -> None:
    """Until the shadow worker has committed every record of its topics, twice 1 s apart with the
    same ends (its own feedback drained); OpsError if it dies or time runs out."""
    calm = 0
    previous: dict[tuple[str, int], int] = {}
    while calm < 2:
        if not worker.alive():
            raise OpsError(f"the shadow worker exited; see {worker.log}")
        if time.monotonic() > deadline:
            raise OpsError(f"shadow {shadow.name} not drained in time; see {worker.log}")
        time.sleep(1.0)
        lag, ends = lag_of(settings, shadow.app_id, shadow.prefix)
        calm = calm + 1 if lag == 0 and ends == previous else 0
        previous = ends
        if progress is not None:
            progress({"phase": "drain", "lag": lag, "copied": shadow.copied})
