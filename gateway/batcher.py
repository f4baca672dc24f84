"""Ingest micro-batching: pings of concurrent requests share one Kafka record per partition.

A request's pings are split by the partition their driver hashes to and
appended to that partition's open batch, so the worker pays Faust's
per-record cost (~200 us here) once per batch, not per ping. Flushes are
rate-limited rather than delayed: after a quiet spell (no flush for
`linger_s`) the open batches go out on the next loop turn, so a lone ping
waits for nothing; under load, flushes happen at most once per `linger_s`,
and batches grow with the load. One flush for all partitions puts their
batches in one produce request. A batch reaching `max_events` goes at once.
Each request is answered once every batch holding its pings is acked.
"""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

from infra.producer import AsyncProducer
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import LocationBatch, LocationEvent

__all__ = ["IngestBatcher"]


class _OpenBatch:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[dict[str, Any]] = []
        self.done: asyncio.Future[None] = loop.create_future()


class IngestBatcher:
    """Coalesces pings per partition and produces them as LocationBatch records."""

    def __init__(
        self, producer: AsyncProducer, topic: str, partitions: int, *, linger_s: float, max_events: int
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.linger_s = linger_s
        self.max_events = max_events
        self.codec = codec_for(LocationBatch)
        self._open: dict[int, _OpenBatch] = {}
        self._tick: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")
        self._inflight: set[asyncio.Task[None]] = set()
        self.records = 0
        self.events = 0

    async def submit(self, events: Sequence[LocationEvent]) -> None:
        """Return once every event is in Kafka; raise ProduceError otherwise."""
        waits = {id(b): b.done for b in (self._add(e) for e in events)}
        # Shielded: a cancelled request (client gone) must not cancel its batch-mates' future.
        await asyncio.gather(*(asyncio.shield(w) for w in waits.values()))

    def _add(self, event: LocationEvent) -> _OpenBatch:
        partition = partition_for(event.driver_id, self.partitions)
        batch = self._open.get(partition)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._open[partition] = _OpenBatch(loop)
            if self._tick is None:
                wait = max(0.0, self._last_flush + self.linger_s - loop.time())
                self._tick = loop.call_later(wait, self._flush_all)
        batch.events.append(event.asdict())
        if len(batch.events) >= self.max_events:
            self._flush(partition)
        return batch

    def _flush_all(self) -> None:
        self._tick = None
        self._last_flush = asyncio.get_running_loop().time()
        for partition in list(self._open):
            self._flush(partition)

    def _flush(self, partition: int) -> None:
        batch = self._open.pop(partition, None)
        if batch is None:
            return
        task = asyncio.get_running_loop().create_task(self._produce(partition, batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _produce(self, partition: int, batch: _OpenBatch) -> None:
        group = self.producer.group()
        try:
            self.producer.send(group, self.topic, self.codec.dumps({"events": batch.events}), partition=partition)
            await group.wait()
        except Exception as exc:
            batch.done.set_exception(exc)
            batch.done.exception()  # mark retrieved: waiters may all be gone
        else:
            self.records += 1
            self.events += len(batch.events)
            batch.done.set_result(None)

    async def close(self) -> None:
        """Produce what is open and wait for it."""
        if self._tick is not None:
            self._tick.cancel()
        self._flush_all()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
