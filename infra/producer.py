"""An asyncio producer: idempotent, acks=all, records sent in groups whose delivery is awaited.

The gateway awaits a group before answering 202; an agent awaits a group before its input is
acked, so nothing is acked that Kafka lacks.

Built on aiokafka's producer, not librdkafka's: librdkafka sends one ProduceRequest per
partition (confluentinc/librdkafka#1700), and a ride's records land on ~20 partitions, so at 50
rides/s the broker served ~1,000 requests/s and was the busiest process on the machine. aiokafka
keeps one request in flight per broker and puts every partition that is ready into the next one.
Measured side by side (`python -m bench.producers`): the broker's CPU fell to about a third, and
the client's and the group latency fell too.
"""
from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from aiokafka.structs import RecordMetadata

__all__ = ["AsyncProducer", "DeliveryGroup", "Outgoing", "ProduceError", "is_transient"]

DELIVERY_TIMEOUT_MS = 15_000  # a record not acked by then fails its group
Outgoing = tuple[str, bytes | None, bytes | None, int | None]  # topic, value, key, partition


def is_transient(exc: BaseException) -> bool:
    """A broker that was unavailable (retrying may succeed), not a record Kafka refuses for good."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, (KafkaTimeoutError, KafkaConnectionError))


class ProduceError(RuntimeError):
    """Kafka did not take every record of a group; `transient` when every cause may pass."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class DeliveryGroup:
    """Records produced together; `wait()` returns once Kafka acked them all."""

    def __init__(self) -> None:
        self._pending = 0
        self._done: asyncio.Future[None] | None = None
        self.errors: list[BaseException] = []
        self.failed: list[Outgoing] = []  # the records not acked, in the order sent (to send again)
        # (topic, partition) -> highest acked offset: where a changelog stands.
        self.offsets: dict[tuple[str, int], int] = {}

    def _delivered(self, record: Outgoing, fut: asyncio.Future[RecordMetadata]) -> None:
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is None:
            meta = fut.result()
            key = (meta.topic, meta.partition)
            if meta.offset > self.offsets.get(key, -1):
                self.offsets[key] = meta.offset
        self._settle(exc, record)

    def _settle(self, exc: BaseException | None, record: Outgoing | None = None) -> None:
        if exc is not None:
            self.errors.append(exc)
            if record is not None:
                self.failed.append(record)
        self._pending -= 1
        if self._pending == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def wait(self) -> None:
        """Wait for every record added so far; raise ProduceError if any failed."""
        if self._pending:
            self._done = asyncio.get_running_loop().create_future()
            await self._done
        if self.errors:
            first = self.errors[0]
            raise ProduceError(f"{len(self.errors)} record(s) not accepted: {type(first).__name__}: {first}",
                               transient=all(is_transient(e) for e in self.errors))


Record = tuple[DeliveryGroup, str, bytes | None, bytes | None, int | None, int | None]  # ..., timestamp ms


class AsyncProducer:
    """aiokafka producer behind a synchronous `send`: records queue in order and one task hands
    them to aiokafka, so code without an await (a table flush) can produce."""

    def __init__(self, bootstrap: str, *, linger_ms: int = 0, stamp: Callable[[], int] | None = None,
                 **extra: Any) -> None:
        """`stamp`: the timestamp each record gets when sent (default: the broker client's wall clock)."""
        self._stamp = stamp
        self._config = {
            "bootstrap_servers": bootstrap, "enable_idempotence": True, "acks": "all", "linger_ms": linger_ms,
            "request_timeout_ms": DELIVERY_TIMEOUT_MS, **extra,
        }
        self._producer: AIOKafkaProducer | None = None  # made on the loop it runs on (aiokafka's rule)
        self._queue: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and start handing queued records over (idempotent)."""
        if self._sender is None:
            self._producer = AIOKafkaProducer(**self._config)
            await self._producer.start()
            self._sender = asyncio.get_running_loop().create_task(self._hand_over(), name="kafka-producer")

    async def _hand_over(self) -> None:
        """Give queued records to aiokafka in the order sent; aiokafka batches them per broker."""
        assert self._producer is not None
        while True:
            while not self._queue:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
            group, topic, value, key, partition, ts = self._queue.popleft()
            record = (topic, value, key, partition)
            try:
                fut = await self._producer.send(topic, value, key=key, partition=partition, timestamp_ms=ts)
            except Exception as exc:  # noqa: BLE001 - too large, unknown topic: that record's group fails
                group._settle(exc, record)
            else:
                fut.add_done_callback(functools.partial(group._delivered, record))

    def group(self) -> DeliveryGroup:
        return DeliveryGroup()

    def send(
        self, group: DeliveryGroup, topic: str, value: bytes | None, *, key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record in `group` (value None: a tombstone)."""
        if self._sender is None:
            raise ProduceError(f"cannot produce to {topic}: the producer is not started")
        group._pending += 1
        self._queue.append((group, topic, value, key, partition, self._stamp() if self._stamp else None))
        self._drained.clear()
        self._wake.set()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, then stop."""
        if self._sender is None:
            return
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass  # aiokafka's stop below fails what it still holds
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)
        self._sender = None
        while self._queue:  # never handed over: their groups fail rather than wait forever
            group, topic, value, key, partition, _ = self._queue.popleft()
            group._settle(ProduceError(f"producer closed before a record for {topic} was sent"),
                          (topic, value, key, partition))
        if self._producer is not None:
            await self._producer.stop()
