"""`livetrack notifications redrive`: send dead-lettered notification sends again.

Every letter of `notifications-dlq` from `from_offset` that came from `notification-deliveries` goes
back there, with its key, as it was. The senders agent's ledger makes a re-drive send nothing already
delivered (a letter re-driven twice is sent once); one that fails for good again is a new letter.
"""
from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Producer

from infra.settings import Settings
from infra.topics import end_offsets, read_topic
from schemas.avro import codec_for
from schemas.records import DeadLetter
from schemas.topics import NOTIFICATION_DELIVERIES, NOTIFICATIONS_DLQ

__all__ = ["Redriven", "redrive"]


@dataclass(frozen=True)
class Redriven:
    redriven: int
    skipped: int  # letters of other topics
    next_offset: int  # where the next re-drive starts to take only newer letters


def redrive(settings: Settings, from_offset: int = 0, timeout_s: float = 30) -> Redriven:
    codec = codec_for(DeadLetter)
    end = end_offsets(settings, NOTIFICATIONS_DLQ.name).get(0, 0)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all", "enable.idempotence": True})
    sent = skipped = 0
    for m in read_topic(settings, NOTIFICATIONS_DLQ.name, {0: from_offset}, timeout_s):
        raw = m.value()
        letter = codec.loads(raw) if raw is not None else None
        if letter is None or letter["topic"] != NOTIFICATION_DELIVERIES.name or letter["value"] is None:
            skipped += 1
            continue
        key = letter["key"].encode() if letter["key"] is not None else None
        producer.produce(NOTIFICATION_DELIVERIES.name, letter["value"], key=key)
        sent += 1
    left = producer.flush(timeout_s)
    if left:
        raise RuntimeError(f"{left} re-driven record(s) not acked within {timeout_s} s")
    return Redriven(sent, skipped, end)
