"""What every batched agent shares: binding events to table writes, decoding, dead letters."""
from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator, Sequence, Type, TypeVar

import faust
from faust.streams import _current_event
from faust.types import TP
from faust.types import Message as FaustMessage

from agents.errors import AgentError
from infra.producer import AsyncProducer, DeliveryGroup
from schemas.avro import codec_for
from schemas.records import DeadLetter

__all__ = [
    "AGENT_ERRORS", "DeadLetters", "bind_event", "decode_records", "partition_event", "register_batched", "unbound_event",
]

log = logging.getLogger(__name__)
R = TypeVar("R", bound=faust.Record)
# What a bad item can raise in pure code; anything else is a bug and should surface.
AGENT_ERRORS = (AgentError, ValueError, TypeError, KeyError, AttributeError)


def bind_event(event: faust.EventT | None) -> None:
    """Make `event` the current one, as Faust does per event in a plain `async for`.

    `take_events` hands over a batch without doing this, yet table reads and
    writes (RocksDB partition) are routed by the current event. Faust has no
    public setter, so this sets the same context variable.
    """
    _current_event.set(weakref.ref(event) if event is not None else None)


def partition_event(app: faust.App, topic: str, partition: int) -> faust.EventT:
    """An event of `topic`'s `partition` with no record: what table writes are routed by."""
    message = FaustMessage(topic, partition, -1, 0.0, 0, None, None, None, None, tp=TP(topic, partition))
    return faust.Event(app, None, None, None, message)


@contextmanager
def unbound_event() -> Iterator[None]:
    """No current event inside (a store read searches every partition), the caller's again after."""
    token = _current_event.set(None)
    try:
        yield
    finally:
        _current_event.reset(token)


class DeadLetters:
    """Sends what an agent cannot accept to a `*-dlq` topic, with where it came from and why."""

    def __init__(self, topic: str, producer: AsyncProducer, clock_ms: Callable[[], int]) -> None:
        self.topic = topic
        self.producer = producer
        self.clock_ms = clock_ms
        self.codec = codec_for(DeadLetter)
        self.count = 0

    def send(self, group: DeliveryGroup, event: faust.EventT, reason: str, value: bytes | None = None) -> None:
        """Dead-letter `value` (default: the whole record) of `event`."""
        msg = event.message
        key = msg.key.decode(errors="replace") if isinstance(msg.key, bytes) else None
        raw = value if value is not None else (msg.value if isinstance(msg.value, bytes) else None)
        letter = DeadLetter(
            topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=reason[:500],
            key=key, value=raw, ts=self.clock_ms(),
        )
        self.count += 1
        # Where and why, never the payload: it may hold a person's position.
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
        self.producer.send(group, self.topic, self.codec.dumps(letter), key=msg.key)

    @contextmanager
    def guard(self, group: DeliveryGroup, event: faust.EventT, what: str, value: bytes | None = None) -> Iterator[None]:
        """Dead-letter instead of raising: one bad item never kills the agent."""
        try:
            yield
        except AGENT_ERRORS as exc:
            self.send(group, event, f"{what}: {type(exc).__name__}: {exc}", value)


def decode_records(
    events: Sequence[faust.EventT], record: Type[R], dead_letters: DeadLetters, group: DeliveryGroup
) -> Iterator[tuple[faust.EventT, dict]]:
    """Decode raw values as `record` dicts, dead-lettering what does not decode."""
    codec = codec_for(record)
    for event in events:
        try:
            yield event, codec.loads(event.message.value)
        except Exception as exc:  # any malformed bytes: fastavro raises many types
            dead_letters.send(group, event, f"undecodable {record.__name__}: {type(exc).__name__}: {exc}")


def register_batched(
    app: faust.App, topic: faust.TopicT, name: str, process: Callable[[Sequence[faust.EventT]], Awaitable[None]],
    *, batch_max: int, batch_within_s: float,
) -> faust.types.AgentT:
    """An agent named `name` on `topic` that hands `process` up to `batch_max` events at a time;
    Faust acks a batch only after `process` returns."""

    async def agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_max, within=batch_within_s):
            await process(events)

    agent.__name__ = agent.__qualname__ = name
    return app.agent(topic, name=name)(agent)
