"""The worker's own consumer: `locations`, `ride-commands` and `offers` read in whole batches, outside Faust's per-record path.

Why: Faust hands a record to an agent through its consumer thread, the conductor and the stream,
a few event-loop turns per record, and aiokafka fetches again only once every buffered record has
been handed over; with the features and drivers agents sharing the loop, a ride command waited
70-290 ms (p50) between its Kafka timestamp and Faust's fetch at 50 rides/s, and at 1,000 pings/s
the drivers agent got its pings ~1.4 s after they were in Kafka while idle half the time
(docs/benchmarks.md). Here a librdkafka consumer thread passes whole batches to the loop, one turn
per batch.

Faust still owns the assignment: partition p of these topics is read only while Faust has assigned
this worker partition p of `follow` (`driver-cells`: Faust assigns topics with the same partition
count together, changelogs included, so the same worker holds partition p of `driver_to_state` and
`ride_to_state`), and only after Faust has recovered the tables for that assignment. A batch's
offsets are stored once its handler returned (its state and outputs acked) and librdkafka commits
what is stored every COMMIT_EVERY_MS under `group_id(app id)` (synchronously before a reassignment
or stop): at least once, like Faust's own agents, which these agents are built for (a replayed
ping is a duplicate by its seq; a replayed command re-sends what was decided). A commit per batch
was ~50 OffsetCommit requests/s at 50 rides/s.

Each batch goes through the agent runtime (agents.runtime), which commits what the agent decided;
only the records it returns (none of a partition a bug stopped) have their offsets stored, and a
stopped partition is paused. When the feed takes partitions it did not hold, `on_taken` runs first
(the driver desk re-sends recent decisions), before any of their records is handled.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from faust.types import TP
from mode import Service

from agents.runtime import Agent, AgentRuntime
from infra.inbound import Inbound
from infra.tail import next_batch

__all__ = ["Assignment", "BatchFeed", "by_topic", "group_id", "inbound", "next_offsets", "partitions_of"]

log = logging.getLogger(__name__)
Command = tuple[Callable[[Consumer], object], Callable[[BaseException | None], None] | None]
Taken = Callable[[set[int]], Awaitable[None]]
IDLE_S = 0.5  # unassigned, the reader thread waits this long for a command at a time
COMMIT_EVERY_MS = 250  # a crash replays at most about this much more than it would otherwise


def group_id(app_id: str) -> str:
    """The consumer group under which the feed commits what it handled (Faust's own is `app_id`)."""
    return f"{app_id}-feed"


def partitions_of(assignment: Iterable[TP], follow: str) -> set[int]:
    """The partitions of `follow` in Faust's assignment."""
    return {tp.partition for tp in assignment if tp.topic == follow}


def by_topic(msgs: Sequence[Message]) -> dict[str, list[Message]]:
    """Records grouped by topic, each group in consumed order (so in offset order per partition)."""
    groups: dict[str, list[Message]] = {}
    for m in msgs:
        groups.setdefault(m.topic() or "", []).append(m)
    return groups


def next_offsets(records: Sequence[Inbound]) -> list[TopicPartition]:
    """What to commit after `records` (in consumed order): one past the last offset of each partition."""
    last = {(r.topic, r.partition): r.offset for r in records}  # the last one read wins
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def inbound(m: Message) -> Inbound:
    """A librdkafka message as the agents take it."""
    _ts_type, ts = m.timestamp()
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    assert topic is not None and partition is not None and offset is not None, "a consumed record has them"
    return Inbound(topic, partition, offset, ts, m.key(), m.value())


class Assignment:
    """The partitions the feed reads now; the same ones of the driver and ride tables are this worker's.

    Changed only between batches (every handler idle), so a handler sees one assignment throughout.
    """

    def __init__(self) -> None:
        self.partitions: frozenset[int] = frozenset()

    def __call__(self) -> frozenset[int]:
        return self.partitions


class BatchFeed(Service):
    """Reads `handlers`' topics for the partitions Faust assigned this worker of `follow`.

    Only the reader thread touches the librdkafka consumer (called from the loop while the thread
    polled, `store_offsets` held the loop for seconds); the loop sends it commands.
    """

    def __init__(
        self, app: faust.App, bootstrap: str, group_id: str, handlers: Mapping[str, Agent], *, runtime: AgentRuntime,
        follow: str, batch_max: int, assignment: Assignment | None = None, on_taken: Taken | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.runtime = runtime
        self.assignment = assignment if assignment is not None else Assignment()
        self.on_taken = on_taken
        self.handlers = dict(handlers)
        self.follow = follow
        self.batch_max = batch_max
        self._config = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,  # for committed offsets only: assign(), never subscribe()
            "enable.auto.commit": True,  # what store_offsets stored, only
            "auto.commit.interval.ms": COMMIT_EVERY_MS,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
        # Bumped by the reader thread as it changes the assignment: batches read before are dropped
        # (assign() re-reads from the committed offsets), never handled by a worker that may no longer
        # own them.
        self._generation = 0
        self._assigned = False  # read by the thread
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        # Per topic (one agent each, running side by side as Faust's agents did): what the thread read,
        # and a lock held while a batch is handled, so the assignment never changes under one.
        self._queues: dict[str, asyncio.Queue[tuple[int, list[Message]]]] = {t: asyncio.Queue() for t in handlers}
        self._locks = {t: asyncio.Lock() for t in handlers}
        self._thread: threading.Thread | None = None
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.on_partitions_revoked.connect(self._on_partitions_revoked)

    # --- Faust's rebalance --------------------------------------------------------------------
    async def _on_rebalance_complete(self, *_: object, **__: object) -> None:
        """Faust has recovered the tables for its assignment: read the same partitions."""
        await self.assign(partitions_of(self.app.consumer.assignment(), self.follow))

    async def _on_partitions_revoked(self, *_: object, **__: object) -> None:
        await self.assign(set())

    async def assign(self, partitions: set[int]) -> None:
        """Finish the batches in hand, commit, then read `partitions` from their committed offsets."""
        async with self._idle():
            tps = [TopicPartition(topic, p) for topic in self.handlers for p in sorted(partitions)]
            taken = set(partitions) - self.assignment.partitions
            self.assignment.partitions = frozenset()  # if the reassignment fails: nothing is held
            await self._call(lambda c: self._reassign(c, tps))
            if taken and self.on_taken is not None:
                await self.on_taken(taken)
            self.assignment.partitions = frozenset(partitions)
            log.info("feed reads partitions %s of %s", sorted(partitions), sorted(self.handlers))

    @asynccontextmanager
    async def _idle(self) -> AsyncIterator[None]:
        """Every topic's batch in hand finished (and its offsets stored); none starts until exit."""
        async with AsyncExitStack() as held:
            for topic in sorted(self._locks):
                await held.enter_async_context(self._locks[topic])
            yield

    def _reassign(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        """On the reader thread: commit what was handled (the next owner starts after it), then
        read `tps` from their committed offsets; batches read before are dropped from now on."""
        _commit_stored(consumer)
        consumer.assign(tps)
        self._generation += 1
        self._assigned = bool(tps)

    async def _call(self, fn: Callable[[Consumer], object]) -> None:
        """Run `fn(consumer)` on the reader thread; wait for it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                done.set_exception(exc) if exc is not None else done.set_result(None)

        def reply(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, exc)

        self._commands.put((fn, reply))
        await done

    # --- the reader thread --------------------------------------------------------------------
    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        consumer = Consumer(self._config)
        try:
            while self._run_commands(consumer, wait_s=0 if self._assigned else IDLE_S):
                if not self._assigned:
                    continue
                generation = self._generation
                try:
                    msgs = next_batch(consumer, self.batch_max, wait_s=0.02)
                except KafkaException as exc:
                    log.error("feed: %s", exc)
                    continue
                for topic, records in by_topic(msgs).items():
                    loop.call_soon_threadsafe(self._queues[topic].put_nowait, (generation, records))
        finally:
            _commit_stored(consumer)
            consumer.close()

    def _run_commands(self, consumer: Consumer, wait_s: float) -> bool:
        """Run what the loop asked for (waiting up to `wait_s` for the first); False once asked to stop."""
        while True:
            try:
                command = self._commands.get(timeout=wait_s) if wait_s else self._commands.get_nowait()
            except queue.Empty:
                return True
            wait_s = 0
            if command is None:
                return False
            fn, reply = command
            try:
                fn(consumer)
            except Exception as exc:  # to the caller, if it waits
                if reply is None:
                    log.warning("feed: %s", exc)
                else:
                    reply(exc)
            else:
                if reply is not None:
                    reply(None)

    # --- handling on the loop -----------------------------------------------------------------
    async def _pump(self, topic: str) -> None:
        """Hand `topic`'s records to its handler, all that piled up meanwhile in one batch."""
        pending = self._queues[topic]
        while not self.should_stop:
            generation, msgs = await pending.get()
            while not pending.empty() and len(msgs) < self.batch_max:
                later, more = pending.get_nowait()
                generation, msgs = (later, more) if later != generation else (generation, msgs + more)
            async with self._locks[topic]:
                await self._handle_batch(topic, generation, msgs)

    async def _handle_batch(self, topic: str, generation: int, msgs: list[Message]) -> None:
        """Run the batch through its agent; store the offsets of what it committed."""
        if generation != self._generation:
            return  # read before a reassignment: whoever owns these partitions now reads them again
        try:
            done = await self.runtime.run(self.handlers[topic], [inbound(m) for m in msgs], self._store)
        except Exception as exc:  # the runtime itself failed: stop the worker, loudly
            log.critical("feed: the %s batch could not be run", topic, exc_info=exc)
            await self.crash(exc)
            return
        stopped = [TopicPartition(t, p) for t, p in self.runtime.stopped if t == topic]
        if stopped and len(done) < len(msgs):
            self._commands.put((lambda c: c.pause(stopped), None))

    def _store(self, records: Sequence[Inbound]) -> None:
        """Store the committed records' offsets (librdkafka commits them within COMMIT_EVERY_MS)."""
        if records:
            offsets = next_offsets(records)
            self._commands.put((lambda c: c.store_offsets(offsets=offsets), None))

    # --- lifecycle ----------------------------------------------------------------------------
    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read, args=(loop,), name="worker-feed", daemon=True)
        self._thread.start()
        for topic in self.handlers:
            self.add_future(self._pump(topic))

    async def on_stop(self) -> None:
        async with self._idle():  # the batches in hand finish and store their offsets first
            self._generation += 1
            self.assignment.partitions = frozenset()
            self._commands.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)


def _commit_stored(consumer: Consumer) -> None:
    """Commit the handled batches' offsets and wait for it (an auto-commit may be on its way)."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing handled since the last commit
            log.warning("feed: commit failed: %s", exc)
