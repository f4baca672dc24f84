"""agents.feed: which partitions it follows, what it commits, and batches around a reassignment."""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

import faust
from confluent_kafka import Message, TopicPartition
from faust.types import TP

from agents.app import create_app
from agents.errors import Rejected
from agents.feed import BatchFeed, by_topic, inbound, next_offsets, partitions_of
from agents.metrics import WorkerMetrics
from agents.runtime import AgentRuntime, DeadLetters
from infra.inbound import Inbound
from infra.settings import Settings
from tables.transaction import TOGETHER, Transaction
from tests.unit.agents.harness import FakeKafka


def _msg(topic: str, partition: int, offset: int, value: bytes = b"v") -> Message:
    return Message(topic=topic, partition=partition, offset=offset, key=b"k", value=value, timestamp=(1, 1_000))


def test_it_follows_only_the_partitions_faust_assigned_of_the_followed_topic() -> None:
    assignment = {TP("locations", 0), TP("locations", 3), TP("rides", 5), TP("app-ride_to_state-changelog", 6)}
    assert partitions_of(assignment, "locations") == {0, 3}


def test_records_are_grouped_by_topic_in_the_order_read() -> None:
    msgs = [_msg("a", 0, 1), _msg("b", 0, 7), _msg("a", 1, 4), _msg("a", 0, 2)]
    groups = by_topic(msgs)
    assert [(m.partition(), m.offset()) for m in groups["a"]] == [(0, 1), (1, 4), (0, 2)]
    assert [m.offset() for m in groups["b"]] == [7]


def test_the_commit_is_one_past_the_last_offset_of_each_partition() -> None:
    offsets = next_offsets([inbound(m) for m in (_msg("a", 0, 1), _msg("a", 0, 5), _msg("a", 1, 9), _msg("b", 0, 2))])
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets) == [("a", 0, 6), ("a", 1, 10), ("b", 0, 3)]


class _Handler:
    """An agent that records what it was handed; a value of b"bug" raises, b"bad" is rejected."""

    name = "handler"
    order = TOGETHER

    def __init__(self) -> None:
        self.dead_letters = DeadLetters("dispatch-dlq", lambda: 0)
        self.calls: list[list[tuple[str, int, int, bytes | None]]] = []
        self.batch: list[tuple[str, int, int, bytes | None]] = []

    async def prepare(self, records: Sequence[Inbound]) -> None:
        self.batch = []

    def step(self, tx: Transaction, record: Inbound) -> None:
        if record.value == b"bug":
            raise KeyError("a bug")
        if record.value == b"bad":
            raise Rejected("bad input")
        self.batch.append((record.topic, record.partition, record.offset, record.value))

    def end(self, tx: Transaction) -> None:
        self.calls.append(self.batch)

    def aborted(self) -> None:
        return None


class _Consumer:
    """What the feed calls on its librdkafka consumer."""

    def __init__(self) -> None:
        self.stored: list[TopicPartition] = []
        self.assigned: list[TopicPartition] | None = None
        self.paused: list[TopicPartition] = []

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored.extend(offsets)

    def commit(self, asynchronous: bool) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.extend(tps)


def _feed(handler: _Handler) -> BatchFeed:
    app = faust.App("test-feed", broker="memory://", store="memory://")
    runtime = AgentRuntime(FakeKafka(), WorkerMetrics(), lambda: 0)  # type: ignore[arg-type]
    return BatchFeed(app, "127.0.0.1:1", "test-feed-dispatch", {"ride-commands": handler}, runtime=runtime,
                     follow="locations", batch_max=10)


def _commits(feed: BatchFeed, consumer: "_Consumer | None" = None) -> list[tuple[str, int, int]]:
    consumer = consumer or _Consumer()
    while not feed._commands.empty():
        fn, _reply = feed._commands.get_nowait()
        fn(consumer)  # type: ignore[arg-type]
    return [(tp.topic, tp.partition, tp.offset) for tp in consumer.stored]


async def _queued(feed: BatchFeed) -> None:
    """Until the feed has handed its reader thread a command."""
    while feed._commands.empty():
        await asyncio.sleep(0.001)


def _run_queued(feed: BatchFeed) -> "_Consumer":
    """Run the reader thread's next command, as the thread would, and answer the feed."""
    fn, reply = feed._commands.get_nowait()
    consumer = _Consumer()
    fn(consumer)  # type: ignore[arg-type]
    assert reply is not None
    reply(None)
    return consumer


async def test_a_batch_reaches_its_agent_and_is_committed_after_it() -> None:
    handler = _Handler()
    feed = _feed(handler)
    await feed._handle_batch("ride-commands", feed._generation, [_msg("ride-commands", 2, 40, b"x"),
                                                                 _msg("ride-commands", 2, 41, b"y")])
    assert handler.calls == [[("ride-commands", 2, 40, b"x"), ("ride-commands", 2, 41, b"y")]]
    assert _commits(feed) == [("ride-commands", 2, 42)]


async def test_rejected_input_is_dead_lettered_and_committed() -> None:
    handler = _Handler()
    feed = _feed(handler)
    await feed._handle_batch("ride-commands", feed._generation, [_msg("ride-commands", 0, 7, b"bad"),
                                                                 _msg("ride-commands", 0, 8, b"x")])
    assert handler.calls == [[("ride-commands", 0, 8, b"x")]]
    assert _commits(feed) == [("ride-commands", 0, 9)]
    kafka = feed.runtime.producer
    assert [t for t, *_ in kafka.order] == ["dispatch-dlq"]  # type: ignore[attr-defined]


async def test_a_bug_stops_its_partition_uncommitted_and_paused_while_the_others_go_on() -> None:
    handler = _Handler()
    feed = _feed(handler)
    await feed._handle_batch("ride-commands", feed._generation, [
        _msg("ride-commands", 0, 7, b"x"), _msg("ride-commands", 1, 3, b"bug"), _msg("ride-commands", 1, 4, b"y"),
        _msg("ride-commands", 2, 5, b"z")])
    assert handler.calls == [[("ride-commands", 0, 7, b"x"), ("ride-commands", 2, 5, b"z")]]  # decided again without 1
    consumer = _Consumer()
    assert sorted(_commits(feed, consumer)) == [("ride-commands", 0, 8), ("ride-commands", 2, 6)]
    assert [(tp.topic, tp.partition) for tp in consumer.paused] == [("ride-commands", 1)]
    stopped = feed.runtime.stopped[("ride-commands", 1)]
    assert (stopped.offset, stopped.error) == (3, "KeyError: 'a bug'")
    assert not [t for t, *_ in feed.runtime.producer.order]  # type: ignore[attr-defined]  # nothing dead-lettered
    await feed._handle_batch("ride-commands", feed._generation, [_msg("ride-commands", 1, 5, b"w"),
                                                                 _msg("ride-commands", 0, 8, b"v")])
    assert handler.calls[-1] == [("ride-commands", 0, 8, b"v")]  # the stopped partition stays stopped
    assert _commits(feed) == [("ride-commands", 0, 9)]


async def test_a_batch_read_before_a_reassignment_is_dropped_and_not_committed() -> None:
    handler = _Handler()
    feed = _feed(handler)
    stale = feed._generation
    feed._reassign(_Consumer(), [])  # type: ignore[arg-type]
    await feed._handle_batch("ride-commands", stale, [_msg("ride-commands", 0, 7)])
    assert handler.calls == [] and _commits(feed) == []


async def test_the_assignment_it_shares_changes_only_once_its_consumer_reads_the_new_partitions() -> None:
    feed = _feed(_Handler())
    feed.assignment.partitions = frozenset({0})
    task = asyncio.ensure_future(feed.assign({1, 3}))
    await _queued(feed)
    assert feed.assignment() == frozenset()  # between the two: nothing is decided in place
    consumer = _run_queued(feed)
    await asyncio.wait_for(task, 1.0)
    assert feed.assignment() == frozenset({1, 3})
    assert [(tp.topic, tp.partition) for tp in consumer.assigned or []] == [("ride-commands", 1), ("ride-commands", 3)]


def test_the_worker_reads_pings_and_dispatch_through_the_feed_not_faust(tmp_path: Any) -> None:
    app = create_app(Settings(state_dir=tmp_path), store="memory://")
    faust_topics = {t for agent in app.agents.values() for t in agent.channel.topics}  # type: ignore[attr-defined]
    feeds = [s for s in app._children if isinstance(s, BatchFeed)]  # type: ignore[attr-defined]
    assert len(feeds) == 1
    feed = feeds[0]
    assert set(feed.handlers) == {"locations", "ride-commands", "offers"}
    assert not faust_topics & set(feed.handlers)  # read once, by the feed: Faust would hand them over record by record
    # ...on the partitions Faust assigns it of a topic Faust does read, with the same partition count.
    assert feed.follow == "driver-cells" and feed.follow in faust_topics
    assert feed.on_taken is not None  # partitions taken over: the desk re-sends recent decisions first


async def test_partitions_it_takes_are_handed_to_on_taken_before_any_of_their_records() -> None:
    feed = _feed(_Handler())
    seen: list[tuple[set[int], frozenset[int]]] = []

    async def taken(partitions: set[int]) -> None:
        seen.append((partitions, feed.assignment()))

    feed.on_taken = taken
    feed.assignment.partitions = frozenset({0, 1})
    task = asyncio.ensure_future(feed.assign({1, 2, 3}))
    await _queued(feed)
    _run_queued(feed)
    await asyncio.wait_for(task, 1.0)
    # Only the partitions it did not hold, while nothing is decided in place yet.
    assert seen == [({2, 3}, frozenset())]
    assert feed.assignment() == frozenset({1, 2, 3})
