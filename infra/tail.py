"""Follow every partition of a topic from a recent point in time, handing decoded records to the loop.

A consumer thread with manual assignment (no group: every process reads every partition) starts
at the offsets of `now - replay_ms`, reports `ready` once it has caught up with what was there at
start, then follows the topic. Decoding and the handler run on the event loop. Used by the gateway
(`push`, `rides`) and by the worker (its replica of `cell_to_drivers`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Awaitable, Callable, Generic, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from infra.topics import record_position, while_settling

__all__ = ["TopicTail", "next_batch"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Decode = Callable[[bytes | None, bytes], T]
Handler = Callable[[list[T]], Awaitable[None]]


def next_batch(consumer: Consumer, max_n: int = 500, wait_s: float = 0.05) -> list[Message]:
    """Up to `max_n` records: waits `wait_s` for the first only, then takes what is already fetched.
    Error events among them are logged and left out.

    (`consume(n, timeout)` alone would wait for n records or the whole timeout.)
    """
    first = consumer.poll(wait_s)
    if first is None:
        return []
    good = []
    for m in (first, *consumer.consume(max_n - 1, timeout=0)):
        if m.error() is None:
            good.append(m)
        else:
            log.warning("consumer of %s: %s", m.topic(), m.error())
    return good


class TopicTail(Generic[T]):
    """Reads `topic` in a thread, decodes (key, value) with `decode`, awaits `handler` per batch on the loop."""

    def __init__(
        self, bootstrap: str, topic: str, decode: Decode[T], handler: Handler[T], *, replay_ms: int,
        client_id: str,
    ) -> None:
        self.topic = topic
        self.decode = decode
        self.handler = handler
        self.replay_ms = replay_ms
        self.ready = asyncio.Event()
        self.decode_errors = 0
        self._stop = threading.Event()
        self._queue: asyncio.Queue[list[tuple[bytes | None, bytes]]] = asyncio.Queue()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"{client_id}-{uuid.uuid4().hex[:8]}",  # never joined: assign() only
            "enable.auto.commit": False,
            "log_level": 3,
        })
        self._thread: threading.Thread | None = None
        self._pump: asyncio.Task[None] | None = None
        self._catch_up: dict[int, int] = {}

    def _assign(self) -> None:
        """Start every partition at `now - replay_ms`; a fresh broker may still be electing leaders."""
        while_settling(self._assign_once, f"{self.topic} consumer")

    def _assign_once(self) -> None:
        self._catch_up.clear()
        meta = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        since = int(time.time() * 1000) - self.replay_ms
        # The ends first: a record written while the start offsets are looked up is then read, not
        # skipped (looked up after, the end would already be past it).
        highs = {p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                 for p in meta.partitions}
        wanted = [TopicPartition(self.topic, p, since) for p in meta.partitions]
        starts = self._consumer.offsets_for_times(wanted, timeout=10)
        for tp in starts:
            high = highs[tp.partition]
            if tp.offset < 0 or tp.offset > high:  # nothing that recent: start at the end as it was
                tp.offset = high  # (OFFSET_END would be resolved at the first fetch, skipping what arrives)
            elif tp.offset < high:
                self._catch_up[tp.partition] = high - 1
        self._consumer.assign(starts)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            try:
                msgs = next_batch(self._consumer)
            except KafkaException as exc:
                log.error("%s consumer: %s", self.topic, exc)
                continue
            for m in msgs:
                self._note_caught_up(*record_position(m), loop)
            # Tombstones carry nothing to show (the tailed topics are not compacted to deletes).
            values = [(m.key(), value) for m in msgs if (value := m.value()) is not None]
            if values:
                # No waiting for the loop here: the fetch size bounds what can pile up.
                loop.call_soon_threadsafe(self._queue.put_nowait, values)

    def _note_caught_up(self, partition: int, offset: int, loop: asyncio.AbstractEventLoop) -> None:
        target = self._catch_up.get(partition)
        if target is not None and offset >= target:
            del self._catch_up[partition]
            if not self._catch_up:
                loop.call_soon_threadsafe(self.ready.set)

    async def _drain(self) -> None:
        while True:
            raw = await self._queue.get()
            batch = []
            for key, value in raw:
                try:
                    batch.append(self.decode(key, value))
                except Exception as exc:  # a foreign record on the topic must not stop the tail
                    self.decode_errors += 1
                    log.warning("undecodable %s record skipped: %s", self.topic, exc)
            try:
                await self.handler(batch)
            except Exception:
                log.exception("%s handler failed on a batch of %d", self.topic, len(batch))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._assign)
        if not self._catch_up:
            self.ready.set()
        self._pump = asyncio.create_task(self._drain(), name=f"{self.topic}-tail-drain")
        self._thread = threading.Thread(target=self._run, args=(loop,), name=f"{self.topic}-tail", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # It never waits on the loop, so it ends within one poll timeout.
            await asyncio.to_thread(self._thread.join)
        if self._pump is not None:
            self._pump.cancel()
        self._consumer.close()
