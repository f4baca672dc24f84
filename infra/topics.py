"""Create the declared topics that are missing; safe to run again and again."""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where the package's stubs declare it

from infra.settings import Settings
from schemas.topics import ALL_TOPICS, TopicSpec

__all__ = [
    "TopicError", "end_offsets", "ensure_topics", "partition_count", "read_topic", "record_position", "topic_config",
    "while_settling",
]

log = logging.getLogger(__name__)
# What a just-started broker or just-created topic answers for a moment (no leader elected yet).
SETTLING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._TIMED_OUT}
T = TypeVar("T")


def while_settling(fn: Callable[[], T], what: str, attempts: int = 20, pause_s: float = 0.5) -> T:
    """`fn()`, tried again while the cluster answers that it is still settling (or retriable)."""
    for _ in range(attempts - 1):
        try:
            return fn()
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in SETTLING):
                raise
            log.info("%s: %s; trying again", what, err.str())
            time.sleep(pause_s)
    return fn()  # the last attempt: its error goes to the caller


class TopicError(RuntimeError):
    """A declared topic could not be created or does not match its declaration."""


def topic_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    """Kafka topic config for a declaration under these settings."""
    config = {"cleanup.policy": "compact" if spec.compacted else "delete"}
    if spec.retention_setting:
        config["retention.ms"] = str(getattr(settings, spec.retention_setting))
    if settings.replication_factor >= 3:
        config["min.insync.replicas"] = "2"
    return {**config, **spec.config}


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] = ALL_TOPICS) -> list[str]:
    """Create each missing topic; return the names created. Existing ones are checked, not changed."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    existing = admin.list_topics(timeout=10).topics
    wanted = list(specs)
    for spec in wanted:
        have = existing.get(spec.name)
        want = spec.partition_count(settings.partitions)
        if have is not None and len(have.partitions) != want:
            # Keys would move partitions and break table co-partitioning: refuse, don't "fix".
            raise TopicError(f"topic {spec.name} has {len(have.partitions)} partitions, declared {want}")
    new = [
        NewTopic(spec.name, spec.partition_count(settings.partitions), settings.replication_factor,
                 config=topic_config(spec, settings))
        for spec in wanted if spec.name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another process won the race
                raise TopicError(f"creating {name}: {exc}") from exc
    log.info("created topics: %s", ", ".join(created))
    return created


def partition_count(settings: Settings, spec: TopicSpec) -> int:
    """Partitions the topic has in the cluster (the truth a producer must use)."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    meta = admin.list_topics(spec.name, timeout=10).topics.get(spec.name)
    if meta is None or meta.error is not None:
        raise TopicError(f"topic {spec.name} missing; run `livetrack topics create`")
    return len(meta.partitions)


def record_position(m: Message) -> tuple[int, int]:
    """A consumed record's (partition, offset); None only on error events, which are filtered before."""
    partition, offset = m.partition(), m.offset()
    assert partition is not None and offset is not None, "a consumed record has a partition and an offset"
    return partition, offset


def _ends(c: Consumer, topic: str) -> dict[int, int]:
    def ends() -> dict[int, int]:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    return while_settling(ends, f"end offsets of {topic}")


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> the offset the next record of `topic` will get."""
    c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "livetrack-probe"})
    try:
        return _ends(c, topic)
    finally:
        c.close()


def read_topic(settings: Settings, topic: str, since: dict[int, int] | None = None,
               timeout_s: float = 10) -> list[Message]:
    """Every record of `topic` from `since` (default: the beginning) to its end when called."""
    starts = since or {}
    c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "livetrack-reader",
                  "enable.auto.commit": False})
    try:
        ends = _ends(c, topic)
        c.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in ends])
        out: list[Message] = []
        want = sum(ends[p] - starts.get(p, 0) for p in ends)
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is None:
                    partition, offset = record_position(m)
                    if offset < ends[partition]:  # not what came since
                        out.append(m)
        return out
    finally:
        c.close()
