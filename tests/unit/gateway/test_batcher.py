"""gateway.batcher.IngestBatcher against a fake producer: one record per partition per linger window."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Awaitable, Sequence, TypeVar

import pytest

from gateway.batcher import IngestBatcher
from infra.producer import ProduceError
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import LocationBatch, LocationEvent

T = TypeVar("T")
TOPIC = "locations"
PARTITIONS = 8
T0 = 1_732_170_000_000
LONG = 60.0  # a linger that never runs out during a test: only max_events or close() flush


@dataclass
class FakeGroup:
    """A delivery group: `wait()` acks every record sent in it, or fails like Kafka would."""

    producer: "FakeProducer"
    partitions: list[int | None] = field(default_factory=list)

    async def wait(self) -> None:
        await self.producer.acks.wait()
        await asyncio.sleep(0)  # the ack comes back later, never synchronously
        failed = [p for p in self.partitions if p in self.producer.fail_partitions]
        if failed:
            raise ProduceError(f"1 record(s) not accepted: partition {failed[0]} unavailable")


@dataclass
class Sent:
    topic: str
    value: bytes
    key: bytes | None
    partition: int | None
    group: FakeGroup

    def events(self) -> list[dict[str, Any]]:
        return codec_for(LocationBatch).loads(self.value)["events"]  # type: ignore[no-any-return]


class FakeProducer:
    """Stands in for infra.producer.AsyncProducer: records every send, can refuse or fail them."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.fail_partitions: set[int] = set()
        self.refuse: Exception | None = None  # raised by send() itself
        self.acks = asyncio.Event()
        self.acks.set()

    def group(self) -> FakeGroup:
        return FakeGroup(self)

    def send(self, group: FakeGroup, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None) -> None:
        if self.refuse is not None:
            raise self.refuse
        group.partitions.append(partition)
        self.sent.append(Sent(topic, value, key, partition, group))

    def by_partition(self) -> dict[int | None, list[dict[str, Any]]]:
        out: dict[int | None, list[dict[str, Any]]] = {}
        for s in self.sent:
            assert s.partition not in out, "two records for one partition"
            out[s.partition] = s.events()
        return out


def _drivers_on(partition: int, n: int = 1) -> list[str]:
    """`n` driver ids that hash to `partition`."""
    ids = (f"d-{i}" for i in count())
    return [d for d, _ in zip((d for d in ids if partition_for(d, PARTITIONS) == partition), range(n))]


_seq = count(1)


def _ev(driver_id: str, **extra: Any) -> LocationEvent:
    seq = next(_seq)
    return LocationEvent(driver_id=driver_id, seq=seq, lat=37.7 + seq * 1e-5, lng=-122.4, fix_ts=T0 + seq,
                         received_ts=T0 + seq + 3, **extra)


def _batcher(producer: FakeProducer, *, linger_s: float = 0.005, max_events: int = 100) -> IngestBatcher:
    return IngestBatcher(producer, TOPIC, PARTITIONS, linger_s=linger_s, max_events=max_events)  # type: ignore[arg-type]


async def _soon(aw: Awaitable[T], timeout_s: float = 2.0) -> T:
    return await asyncio.wait_for(aw, timeout_s)


async def _ticks(n: int = 5) -> None:
    """Let the loop run what is ready (produce tasks), without letting any linger run out."""
    for _ in range(n):
        await asyncio.sleep(0)


def _dicts(events: Sequence[LocationEvent]) -> list[dict[str, Any]]:
    return [e.asdict() for e in events]


async def test_pings_on_different_partitions_go_to_different_records() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer)
    events = [_ev(_drivers_on(p)[0]) for p in (0, 3, 5, 7)]
    await _soon(batcher.submit(events))
    assert producer.by_partition() == {partition_for(e.driver_id, PARTITIONS): [e.asdict()] for e in events}
    assert {(s.topic, s.key) for s in producer.sent} == {(TOPIC, None)}
    assert (batcher.records, batcher.events) == (4, 4)


async def test_a_drivers_pings_share_its_partitions_record() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer)
    a, b = _drivers_on(2, 2)
    events = [_ev(a), _ev(b), _ev(a)]
    await _soon(batcher.submit(events))
    assert producer.by_partition() == {2: _dicts(events)}


async def test_concurrent_submits_within_the_linger_share_one_record_per_partition() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=0.05)
    (p1a, p1b), (p4a,) = _drivers_on(1, 2), _drivers_on(4)
    first = [_ev(p1a), _ev(p4a)]
    second = [_ev(p1b)]
    third = [_ev(p4a), _ev(p1a)]
    await _soon(asyncio.gather(batcher.submit(first), batcher.submit(second), batcher.submit(third)))
    assert producer.by_partition() == {
        1: _dicts([first[0], second[0], third[1]]),
        4: _dicts([first[1], third[0]]),
    }
    assert (batcher.records, batcher.events) == (2, 5)


async def test_submit_returns_only_once_its_records_are_acked() -> None:
    producer = FakeProducer()
    producer.acks.clear()
    batcher = _batcher(producer)
    task = asyncio.create_task(batcher.submit([_ev(_drivers_on(0)[0])]))
    await asyncio.sleep(0.05)  # the linger ran out: the record is sent, not acked
    assert len(producer.sent) == 1 and not task.done()
    producer.acks.set()
    await _soon(task)
    assert batcher.records == 1


async def test_linger_flushes_without_anything_else_happening() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=0.01)
    await _soon(batcher.submit([_ev(_drivers_on(6)[0])]), timeout_s=1.0)
    assert len(producer.sent) == 1


async def test_a_full_batch_is_produced_at_once() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=LONG, max_events=3)
    events = [_ev(d) for d in _drivers_on(3, 3)]
    await _soon(batcher.submit(events), timeout_s=1.0)  # far less than the linger
    assert producer.by_partition() == {3: _dicts(events)}


async def test_the_rest_after_a_full_batch_opens_a_new_one() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=LONG, max_events=3)
    await _flushed_once(batcher, producer)
    events = [_ev(d) for d in _drivers_on(5, 5)]
    task = asyncio.create_task(batcher.submit(events))
    await _ticks()
    assert [s.events() for s in producer.sent] == [_dicts(events[:3])]
    assert not task.done()  # two pings still wait: a flush happened less than a linger ago
    await _soon(batcher.close())
    await _soon(task)
    assert [s.events() for s in producer.sent] == [_dicts(events[:3]), _dicts(events[3:])]
    assert {s.partition for s in producer.sent} == {5}


async def test_a_lone_ping_after_a_quiet_spell_goes_at_once() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=LONG)
    (d,) = _drivers_on(2)
    await _soon(batcher.submit([_ev(d)]))  # no flush for a linger (ever): nothing to wait for
    assert len(producer.sent) == 1
    task = asyncio.create_task(batcher.submit([_ev(d)]))
    await _ticks()
    assert len(producer.sent) == 1 and not task.done()  # just flushed: this one waits for the linger
    await _soon(batcher.close())
    await _soon(task)


async def _flushed_once(batcher: IngestBatcher, producer: FakeProducer) -> None:
    """Make the batcher have flushed just now, then forget what it sent."""
    (d,) = _drivers_on(7)
    await _soon(batcher.submit([_ev(d)]))
    producer.sent.clear()


async def test_records_decode_to_the_submitted_events() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer)
    (d,) = _drivers_on(0)
    events = [_ev(d, speed=12.5, bearing=90.0, accuracy=3.0), _ev(d)]
    await _soon(batcher.submit(events))
    (sent,) = producer.sent
    decoded = codec_for(LocationBatch).loads(sent.value)
    assert decoded == {"events": _dicts(events)}
    assert [LocationEvent(**e) for e in decoded["events"]] == events


async def test_a_failed_record_fails_every_submit_with_pings_in_it() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=0.02)
    (bad,), (good,) = _drivers_on(2), _drivers_on(6)
    producer.fail_partitions = {2}
    results = await _soon(asyncio.gather(
        batcher.submit([_ev(good), _ev(bad)]),
        batcher.submit([_ev(bad)]),
        batcher.submit([_ev(good)]),
        return_exceptions=True,
    ))
    assert [type(r) for r in results] == [ProduceError, ProduceError, type(None)]
    assert "partition 2" in str(results[0])
    assert (batcher.records, batcher.events) == (1, 2)  # only what Kafka took is counted


async def test_a_refused_send_fails_the_submit() -> None:
    producer = FakeProducer()
    producer.refuse = ProduceError("cannot produce to locations: unknown topic")
    batcher = _batcher(producer)
    with pytest.raises(ProduceError, match="unknown topic"):
        await _soon(batcher.submit([_ev(_drivers_on(1)[0])]))
    assert batcher.records == 0


async def test_a_failure_does_not_outlive_its_batch() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer)
    (d,) = _drivers_on(4)
    producer.fail_partitions = {4}
    with pytest.raises(ProduceError):
        await _soon(batcher.submit([_ev(d)]))
    producer.fail_partitions = set()
    await _soon(batcher.submit([_ev(d)]))
    assert batcher.records == 1


async def test_close_flushes_open_batches() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=LONG)
    await _flushed_once(batcher, producer)
    a, b = [_ev(_drivers_on(p)[0]) for p in (0, 1)]
    tasks = [asyncio.create_task(batcher.submit([a])), asyncio.create_task(batcher.submit([b]))]
    await _ticks()
    assert producer.sent == []  # nothing is full, the linger has not run out
    await _soon(batcher.close())
    assert producer.by_partition() == {0: [a.asdict()], 1: [b.asdict()]}
    assert all(t.done() and t.exception() is None for t in tasks)
    await _soon(batcher.close())  # nothing left: a second close sends nothing
    assert len(producer.sent) == 2


async def test_close_with_nothing_open() -> None:
    producer = FakeProducer()
    await _soon(_batcher(producer).close())
    assert producer.sent == []


async def test_empty_submit_sends_nothing() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer)
    await _soon(batcher.submit([]))
    await batcher.close()
    assert producer.sent == []


async def test_a_cancelled_submit_does_not_fail_the_others_in_its_batch() -> None:
    producer = FakeProducer()
    batcher = _batcher(producer, linger_s=0.05)
    a, b = _drivers_on(3, 2)
    gone = asyncio.create_task(batcher.submit([_ev(a)]))
    waiting = asyncio.create_task(batcher.submit([_ev(b)]))
    await _ticks()
    gone.cancel()
    try:
        results = await _soon(asyncio.gather(waiting, return_exceptions=True))
    finally:
        await _soon(batcher.close())
    assert results == [None]
