"""Kafka -> Socket.IO: consume the push topic and hand updates to the app, started and stopped with it.

Every gateway node reads every partition (manual assignment, no group): each
node serves its own sockets, whatever channel they watch. On start the bridge
replays the recent past of the topic so snapshots exist before the first
subscriber arrives, and reports ready once it has caught up.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Awaitable, Callable

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from infra.settings import Settings
from schemas.avro import codec_for
from schemas.records import PushMessage
from schemas.topics import PUSH

__all__ = ["PushBridge"]

log = logging.getLogger(__name__)
Handler = Callable[[list[dict]], Awaitable[None]]


class PushBridge:
    """Reads `push` in a thread, decodes, and awaits `handler` with each batch on the loop."""

    def __init__(self, settings: Settings, handler: Handler, *, replay_ms: int) -> None:
        self.settings = settings
        self.handler = handler
        self.replay_ms = replay_ms
        self.ready = asyncio.Event()
        self.decode_errors = 0
        self._codec = codec_for(PushMessage)
        self._stop = threading.Event()
        self._queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self._consumer = Consumer({
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"{settings.app_id}-gateway-{uuid.uuid4().hex[:8]}",  # never joined: assign() only
            "enable.auto.commit": False,
            "log_level": 3,
        })
        self._thread: threading.Thread | None = None
        self._pump: asyncio.Task[None] | None = None
        self._catch_up: dict[int, int] = {}

    def _assign(self) -> None:
        meta = self._consumer.list_topics(PUSH.name, timeout=10).topics[PUSH.name]
        if meta.error is not None:
            raise KafkaException(meta.error)
        since = int(time.time() * 1000) - self.replay_ms
        wanted = [TopicPartition(PUSH.name, p, since) for p in meta.partitions]
        starts = self._consumer.offsets_for_times(wanted, timeout=10)
        for tp in starts:
            _, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            if tp.offset < 0:  # nothing that recent: start at the end
                tp.offset = OFFSET_END
            elif tp.offset < high:
                self._catch_up[tp.partition] = high - 1
        self._consumer.assign(starts)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            try:
                msgs = self._next_batch()
            except KafkaException as exc:
                log.error("push consumer: %s", exc)
                continue
            values = []
            for m in msgs:
                if m.error() is None:
                    values.append(m.value())
                    self._note_caught_up(m.partition(), m.offset(), loop)
            if values:
                # No waiting for the loop here: the fetch size bounds what can pile up.
                loop.call_soon_threadsafe(self._queue.put_nowait, values)

    def _next_batch(self) -> list:
        # consume(n, timeout) waits for n messages or the timeout: wait for the
        # first only, then take what is already fetched without waiting.
        first = self._consumer.poll(0.05)
        if first is None:
            return []
        return [first, *self._consumer.consume(499, timeout=0)]

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
            for value in raw:
                try:
                    batch.append(self._codec.loads(value))
                except Exception as exc:  # a foreign record on the topic must not stop pushes
                    self.decode_errors += 1
                    log.warning("undecodable push record skipped: %s", exc)
            try:
                await self.handler(batch)
            except Exception:
                log.exception("push handler failed on a batch of %d", len(batch))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._assign)
        if not self._catch_up:
            self.ready.set()
        self._pump = asyncio.create_task(self._drain(), name="push-bridge-drain")
        self._thread = threading.Thread(target=self._run, args=(loop,), name="push-bridge", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # It never waits on the loop, so it ends within one poll timeout.
            await asyncio.to_thread(self._thread.join)
        if self._pump is not None:
            self._pump.cancel()
        self._consumer.close()
