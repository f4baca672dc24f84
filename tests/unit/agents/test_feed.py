"""agents.feed: which partitions it follows, what it commits, and batches around a reassignment."""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

import faust
from confluent_kafka import Message, TopicPartition
from faust.types import TP

from agents.app import create_app
from agents.feed import BatchFeed, by_topic, next_offsets, partitions_of
from infra.settings import Settings


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
    offsets = next_offsets([_msg("a", 0, 1), _msg("a", 0, 5), _msg("a", 1, 9), _msg("b", 0, 2)])
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets) == [("a", 0, 6), ("a", 1, 10), ("b", 0, 3)]


class _Handler:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[list[tuple[str, int, int, bytes]]] = []

    async def __call__(self, events: Sequence[faust.EventT]) -> None:
        self.calls.append([(e.message.topic, e.message.partition, e.message.offset, e.message.value) for e in events])
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Kafka unavailable")


class _Consumer:
    """What the feed calls on its librdkafka consumer."""

    def __init__(self) -> None:
        self.stored: list[TopicPartition] = []
        self.assigned: list[TopicPartition] | None = None

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored.extend(offsets)

    def commit(self, asynchronous: bool) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps


def _feed(handler: _Handler) -> BatchFeed:
    app = faust.App("test-feed", broker="memory://", store="memory://")
    return BatchFeed(app, "127.0.0.1:1", "test-feed-dispatch", {"ride-commands": handler}, follow="locations",
                     batch_max=10)


def _commits(feed: BatchFeed) -> list[tuple[str, int, int]]:
    consumer = _Consumer()
    while not feed._commands.empty():
        fn, _reply = feed._commands.get_nowait()
        fn(consumer)  # type: ignore[arg-type]
    return [(tp.topic, tp.partition, tp.offset) for tp in consumer.stored]


async def test_a_batch_reaches_its_handler_as_faust_events_and_is_committed_after_it() -> None:
    handler = _Handler()
    feed = _feed(handler)
    await feed._handle_batch("ride-commands", feed._generation, [_msg("ride-commands", 2, 40, b"x"),
                                                                 _msg("ride-commands", 2, 41, b"y")])
    assert handler.calls == [[("ride-commands", 2, 40, b"x"), ("ride-commands", 2, 41, b"y")]]
    assert _commits(feed) == [("ride-commands", 2, 42)]


async def test_a_failed_batch_is_tried_again_and_committed_only_once_handled(monkeypatch: Any) -> None:
    monkeypatch.setattr("agents.feed.RETRY_S", 0.0)
    handler = _Handler(failures=2)
    feed = _feed(handler)
    await feed._handle_batch("ride-commands", feed._generation, [_msg("ride-commands", 0, 7)])
    assert len(handler.calls) == 3
    assert _commits(feed) == [("ride-commands", 0, 8)]


async def test_a_batch_read_before_a_reassignment_is_dropped_and_not_committed() -> None:
    handler = _Handler()
    feed = _feed(handler)
    stale = feed._generation
    feed._reassign(_Consumer(), [])  # type: ignore[arg-type]
    await feed._handle_batch("ride-commands", stale, [_msg("ride-commands", 0, 7)])
    assert handler.calls == [] and _commits(feed) == []


async def test_a_reassignment_during_retries_stops_them_uncommitted(monkeypatch: Any) -> None:
    monkeypatch.setattr("agents.feed.RETRY_S", 0.01)
    handler = _Handler(failures=1_000)
    feed = _feed(handler)
    task = asyncio.ensure_future(feed._handle_batch("ride-commands", feed._generation, [_msg("ride-commands", 0, 7)]))
    await asyncio.sleep(0.05)
    feed._reassign(_Consumer(), [])  # type: ignore[arg-type]
    await asyncio.wait_for(task, 1.0)
    assert handler.calls and _commits(feed) == []


async def test_the_assignment_it_shares_changes_only_once_its_consumer_reads_the_new_partitions() -> None:
    feed = _feed(_Handler())
    feed.assignment.partitions = frozenset({0})
    task = asyncio.ensure_future(feed.assign({1, 3}))
    while feed._commands.empty():
        await asyncio.sleep(0.001)
    assert feed.assignment() == frozenset()  # between the two: nothing is decided in place
    fn, reply = feed._commands.get_nowait()
    consumer = _Consumer()
    fn(consumer)  # type: ignore[arg-type]
    assert reply is not None
    reply(None)
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


def test_the_drivers_agent_leaves_pushes_to_drivers_with_an_unsent_dispatch_change(tmp_path: Any) -> None:
    app = create_app(Settings(state_dir=tmp_path), store="memory://")
    parts = app.livetrack  # type: ignore[attr-defined]
    with parts.offer_agent.unsent_until_done(["d-1"]):
        assert parts.drivers.dispatching("d-1") and not parts.drivers.dispatching("d-2")
    assert not parts.drivers.dispatching("d-1")
