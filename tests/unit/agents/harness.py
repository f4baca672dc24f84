"""A worker in one process over an in-memory Kafka: the agents, their runtime and real table stores.

`FakeKafka` stands in for the producer and the topics: every record gets the next offset of its
topic partition (keyed records go where Kafka's murmur2 partitioner puts them), and records can be
made to fail. `Worker` is `agents.app.create_app` over it, with a memory or RocksDB store, reading
its input topics from the committed offsets as the feed and Faust do, so tests run the pipeline
record by record, crash it at a commit step (`Crash`) and restart it: a new worker over the same
store directory, whose tables recover from their changelogs past the store's persisted offset,
as Faust's recovery does.
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from agents.app import Components, create_app
from agents.runtime import Agent
from infra.inbound import Inbound
from infra.producer import Outgoing, ProduceError
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.topics import ALL_TOPICS
import faust

__all__ = ["NOW", "PARTITIONS", "WAITED", "Crash", "FakeKafka", "Worker", "settings_for"]

NOW = 1_732_170_000_000
WAITED = "<wait>"  # in FakeKafka.sent where a producer's caller waited for acks
PARTITIONS = 4
_apps = itertools.count()


class Crash(BaseException):
    """The worker process dies here (a BaseException: nothing in the worker catches it)."""


@dataclass
class FakeGroup:
    """A DeliveryGroup over FakeKafka: records are in the log once sent; `wait` lets the loop turn."""

    kafka: "FakeKafka"
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    failed: list[Outgoing] = field(default_factory=list)

    async def wait(self) -> None:
        self.kafka.sent.append((WAITED, -1))
        if self.kafka.during_wait:
            await self.kafka.during_wait.pop(0)()
        await asyncio.sleep(0)
        self.kafka.waits += 1
        if self.errors:
            transient = all(isinstance(e, KafkaTimeoutError) for e in self.errors)
            raise ProduceError(f"{len(self.errors)} record(s) not accepted", transient=transient)


class FakeKafka:
    """Topics in memory, as the agents' producer sees them (send, group, wait)."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.logs: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        self.committed: dict[tuple[str, int], int] = {}  # consumer offsets (next to read), per input
        self.failing: list[bool] = []  # the next sends fail: True transient, False for good
        self.waits = 0
        self.sent: list[tuple[str, int]] = []  # (topic, partition) of every record, and waits, in order
        self.order: list[tuple[str, bytes | None, bytes | None]] = []  # every record, in send order
        self.partitions_sent: list[int] = []  # the partition of each of them
        self.during_wait: list[Callable[[], Awaitable[None]]] = []  # run by the next waits, one each

    def partition_count(self, topic: str) -> int:
        for spec in ALL_TOPICS:
            if spec.name == topic:
                return spec.partition_count(self.partitions)
        return self.partitions  # a changelog: as many as its table

    def group(self) -> FakeGroup:
        return FakeGroup(self)

    def send(self, group: FakeGroup, topic: str, value: bytes | None, *, key: bytes | None = None,
             partition: int | None = None) -> None:
        if partition is None:
            count = self.partition_count(topic)
            assert key is not None or count == 1, f"a record for {topic} with neither key nor partition"
            partition = partition_for(key.decode(), count) if key is not None else 0
        if self.failing:
            transient = self.failing.pop(0)
            group.errors.append(KafkaTimeoutError() if transient else MessageSizeTooLargeError())
            group.failed.append((topic, value, key, partition))
            return
        log = self.logs.setdefault((topic, partition), [])
        log.append((key, value))
        group.offsets[(topic, partition)] = len(log) - 1
        self.sent.append((topic, partition))
        self.order.append((topic, key, value))
        self.partitions_sent.append(partition)

    def produce(self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None) -> None:
        """A record from outside the worker (a device, the gateway)."""
        self.send(self.group(), topic, value, key=key, partition=partition)

    def records(self, topic: str, partition: int | None = None, since: int = 0) -> list[Inbound]:
        parts = [partition] if partition is not None else range(self.partition_count(topic))
        out = []
        for p in parts:
            for offset, (key, value) in enumerate(self.logs.get((topic, p), [])):
                if offset >= since:
                    out.append(Inbound(topic, p, offset, NOW, key, value))
        return out

    def values(self, topic: str, record: type) -> list[dict[str, Any]]:
        """The decoded values of `topic`'s records, in the order they were sent (across partitions)."""
        codec = codec_for(record)
        return [codec.loads(value) for t, _key, value in self.order if t == topic and value is not None]

    def uncommitted(self, topic: str) -> list[Inbound]:
        out = []
        for p in range(self.partition_count(topic)):
            out.extend(self.records(topic, p, since=self.committed.get((topic, p), 0)))
        return out

    def commit(self, records: Iterable[Inbound]) -> None:
        for r in records:
            tp = (r.topic, r.partition)
            self.committed[tp] = max(self.committed.get(tp, 0), r.offset + 1)

    def latest(self, changelog: str) -> dict[str, bytes]:
        """The compacted view of a changelog: each key's last value (tombstones remove it)."""
        out: dict[str, bytes] = {}
        for p in range(self.partition_count(changelog)):
            for key, value in self.logs.get((changelog, p), []):
                assert key is not None
                if value is None:
                    out.pop(key.decode(), None)
                else:
                    out[key.decode()] = value
        return out


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    return Settings(state_dir=tmp, partitions=PARTITIONS, app_id=overrides.pop("app_id", "it"), **overrides)


class Worker:
    """`create_app` in this process over `kafka`, its input read from the committed offsets."""

    TOPICS = {"locations": "drivers", "offers": "offers", "ride-commands": "rides", "driver-cells": "cells",
              "rides": "demand", "cell-activity": "features"}

    def __init__(self, tmp: Path, store: str = "memory://", *, kafka: FakeKafka | None = None,
                 owned: Iterable[int] | None = None, clock: list[int] | None = None, **settings: Any) -> None:
        self.tmp = tmp
        self.store = store
        self.settings = settings_for(tmp, **settings)
        self.kafka = kafka if kafka is not None else FakeKafka(self.settings.partitions)
        self.clock = clock if clock is not None else [NOW]
        (tmp / "worker").mkdir(parents=True, exist_ok=True)
        self.app: faust.App = create_app(self.settings, store=store, clock_ms=lambda: self.clock[0],
                                         producer=self.kafka)  # type: ignore[arg-type]
        self.c: Components = self.app.livetrack  # type: ignore[attr-defined]
        self.app.conf.tabledir.mkdir(parents=True, exist_ok=True)
        self.c.assignment.partitions = frozenset(range(self.settings.partitions) if owned is None else owned)
        self.c.view.ready.set()
        for table in self.c.tables.values():  # no Faust assignment here: every partition is this worker's
            table.actives = lambda n=self.kafka.partition_count(table.changelog): range(n)
        self.fault: Callable[[str, str, int], None] | None = None
        self._recover()

    @property
    def now(self) -> int:
        return self.clock[0]

    def agent(self, topic: str) -> Agent:
        agent: Agent = getattr(self.c, self.TOPICS[topic])
        return agent

    def _recover(self) -> None:
        """Faust's recovery: every changelog record past the store's persisted offset into the store."""
        for table in self.c.tables.values():
            for p in range(self.kafka.partition_count(table.changelog)):
                start = table.store.persisted_offset(p)
                log = self.kafka.logs.get((table.changelog, p), [])
                first = 0 if start is None else start + 1
                items = [(k, v) for k, v in log[first:] if k is not None]
                if items:
                    table.store.write(p, items, len(log) - 1)

    async def process(self, topic: str, *, limit: int | None = None) -> int:
        """Run every uncommitted record of `topic` (at most `limit`) through its agent, as one batch."""
        records = self.kafka.uncommitted(topic)[:limit]
        if not records:
            return 0
        await self.c.runtime.run(self.agent(topic), records, self.kafka.commit)
        return len(records)

    async def settle(self, topics: Iterable[str] = ("locations", "offers", "ride-commands", "driver-cells", "rides",
                                                    "cell-activity"), rounds: int = 20) -> None:
        """Process every topic until nothing is left (the pipeline at rest)."""
        topics = list(topics)
        for _ in range(rounds):
            if not sum([await self.process(t) for t in topics]):
                return
        raise AssertionError("the pipeline did not come to rest")

    def close(self) -> None:
        for table in self.c.tables.values():
            table.store.close()

    def restart(self, **kw: Any) -> "Worker":
        """A new worker over the same store directory and Kafka (this one is gone)."""
        self.close()
        return Worker(self.tmp, self.store, kafka=self.kafka, clock=self.clock, **kw)

    def table(self, name: str) -> dict[str, Any]:
        """Every key of a table, decoded from the store (all partitions)."""
        return dict(self.c.tables[name].stored())
