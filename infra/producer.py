"""An asyncio face on librdkafka's producer: idempotent, acks=all, delivery awaited per group.

The gateway awaits a group before answering 202; an agent awaits a group
before Faust acks the batch's input, so nothing is acked that Kafka lacks.
Delivery reports are served by a task on the event loop, not a thread: a
poll thread cost ~half a core in GIL hand-offs at 10k records/s (measured).
"""
from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["AsyncProducer", "DeliveryGroup", "ProduceError"]

POLL_EVERY_S = 0.0005  # while deliveries are outstanding: bounds the added latency


class ProduceError(RuntimeError):
    """Kafka did not take every record of a group."""


class DeliveryGroup:
    """Records produced together; `wait()` returns once Kafka acked them all."""

    def __init__(self, owner: "AsyncProducer") -> None:
        self._owner = owner
        self._pending = 0
        self._done: asyncio.Future[None] | None = None
        self.errors: list[KafkaError] = []
        # (topic, partition) -> highest acked offset: where a changelog stands.
        self.offsets: dict[tuple[str, int], int] = {}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
        else:
            key = (msg.topic(), msg.partition())
            offset = msg.offset()
            if offset > self.offsets.get(key, -1):
                self.offsets[key] = offset
        self._pending -= 1
        self._owner._outstanding -= 1
        if self._pending == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def wait(self) -> None:
        """Wait for every record added so far; raise ProduceError if any failed."""
        if self._pending:
            self._done = asyncio.get_running_loop().create_future()
            self._owner._kick()
            await self._done
        if self.errors:
            raise ProduceError(f"{len(self.errors)} record(s) not accepted: {self.errors[0].str()}")


class AsyncProducer:
    """librdkafka producer whose delivery reports are polled on the running event loop."""

    def __init__(self, bootstrap: str, *, linger_ms: int = 1, **extra: Any) -> None:
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "delivery.timeout.ms": 15_000,
            # Keyed records go where Java clients and aiokafka (Faust) put them.
            "partitioner": "murmur2_random",
            **extra,
        })
        self._outstanding = 0
        self._wake: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the delivery-report task on the running loop (idempotent)."""
        if self._poller is None:
            self._wake = asyncio.Event()
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="kafka-producer-poll")

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _poll(self) -> None:
        assert self._wake is not None
        while True:
            self._producer.poll(0)
            if self._outstanding > 0:
                await asyncio.sleep(POLL_EVERY_S)
            else:
                self._wake.clear()
                await self._wake.wait()

    def group(self) -> DeliveryGroup:
        return DeliveryGroup(self)

    def send(
        self, group: DeliveryGroup, topic: str, value: bytes | None, *, key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record in `group` (value None: a tombstone)."""
        kwargs: dict[str, Any] = {"key": key, "on_delivery": group._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                break
            except BufferError:  # local queue full: serve deliveries, then retry
                self._producer.poll(0.005)
            except KafkaException as exc:
                raise ProduceError(f"cannot produce to {topic}: {exc}") from exc
        group._pending += 1
        self._outstanding += 1
        self._kick()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, then stop polling."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._producer.flush, timeout_s)
        self._producer.poll(0)
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
