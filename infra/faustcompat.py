"""Every use of Faust's internals, in one place.

livetrack uses Faust for what it is good at: the consumer group and its
assignment, table recovery from changelogs, standbys, the worker CLI and web
server. It writes tables and reads its hottest topics itself, which needs a
few things Faust has no public API for; each of them is here, so an upgrade
of faust-streaming is checked against this file alone (and its tests):

- a table store read and written by explicit partition (Faust routes by the
  "current event", a private context variable, and writes one key at a time);
- the offset Faust's recovery resumes a table partition from (the store's
  persisted offset, written in the same RocksDB write batch as the values);
- holding a Faust event so that Faust never commits it (its message refcount);
- the partitions of the active assignment;
- a stream partition with no committed offset read from its start after a rebalance: Faust seeks
  only the committed ones, so one whose records were fetched and dropped while the tables
  recovered would otherwise go on past them (faust-streaming issues 216 and 596: those records
  were never processed, or never committed).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol

import faust
import faust.types
from faust.types import TP

__all__ = [
    "PartitionStore", "active_partitions", "changelog_topic", "hold", "read_uncommitted_from_start", "store_of",
]


class PartitionStore(Protocol):
    """A table's local store, addressed by partition."""

    def get(self, key: bytes, partition: int) -> bytes | None: ...

    def get_any(self, key: bytes) -> bytes | None: ...

    def write(self, partition: int, items: Iterable[tuple[bytes, bytes | None]], offset: int | None) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...

    def persisted_offset(self, partition: int) -> int | None: ...

    def close(self) -> None: ...


class _MemoryStore:
    """Faust's memory store: one dict for every partition (tests)."""

    def __init__(self, table: faust.types.TableT[Any, Any]) -> None:
        self._data: dict[bytes, bytes] = table.data.data  # type: ignore[attr-defined]  # the memory Store's dict
        self._offsets: dict[int, int] = {}
        self._partition_of: dict[bytes, int] = {}  # of the keys written here (not by Faust's recovery)

    def get(self, key: bytes, partition: int) -> bytes | None:
        return self._data.get(key)

    def get_any(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def write(self, partition: int, items: Iterable[tuple[bytes, bytes | None]], offset: int | None) -> None:
        for key, value in items:
            if value is None:
                self._data.pop(key, None)
                self._partition_of.pop(key, None)
            else:
                self._data[key] = value
                self._partition_of[key] = partition
        if offset is not None:
            self._offsets[partition] = offset

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value of `partition` (keys of unknown partition count as partition 0)."""
        return iter([(k, v) for k, v in self._data.items() if self._partition_of.get(k, 0) == partition])

    def persisted_offset(self, partition: int) -> int | None:
        return self._offsets.get(partition)

    def close(self) -> None:
        return None


class _RocksStore:
    """Faust's RocksDB store (rocksdict): one database per partition, opened on first use."""

    def __init__(self, table: faust.types.TableT[Any, Any]) -> None:
        self._store: Any = table.data
        self._topic = changelog_topic(table)

    def _db(self, partition: int) -> Any:
        return self._store._db_for_partition(partition)

    def get(self, key: bytes, partition: int) -> bytes | None:
        value: bytes | None = self._db(partition).get(key)
        return value

    def get_any(self, key: bytes) -> bytes | None:
        """The value in whichever partition this worker holds has it (a read-only lookup across partitions)."""
        for db in list(self._store._dbs.values()):
            if db.key_may_exist(key):
                value: bytes | None = db.get(key)
                if value is not None:
                    return value
        return None

    def write(self, partition: int, items: Iterable[tuple[bytes, bytes | None]], offset: int | None) -> None:
        """Values and the changelog offset they reach, in one RocksDB write batch: atomic on disk."""
        import rocksdict

        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            batch.put(self._store.offset_key, str(offset).encode())
        self._db(partition).write(batch)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value of `partition`."""
        offset_key = self._store.offset_key
        for key, value in self._db(partition).items():
            if key != offset_key:
                yield key, value

    def persisted_offset(self, partition: int) -> int | None:
        offset: int | None = self._store.persisted_offset(TP(self._topic, partition))
        return offset

    def close(self) -> None:
        """Close every open partition database (a worker going away within the process: tests)."""
        for db in list(self._store._dbs.values()):
            db.close()
        self._store._dbs.clear()


def store_of(table: faust.types.TableT[Any, Any]) -> PartitionStore:
    """The partition-addressed store behind a Faust table (memory:// or rocksdb://)."""
    from faust.stores.memory import Store as MemoryStore

    if isinstance(table.data, MemoryStore):
        return _MemoryStore(table)
    return _RocksStore(table)


def changelog_topic(table: faust.types.TableT[Any, Any]) -> str:
    name: str = table.changelog_topic.get_topic_name()
    return name


def hold(event: faust.EventT[Any]) -> None:
    """Keep Faust from ever acking (and so committing) `event`: its stream acks it, the refcount stays."""
    event.message.incref()


def active_partitions(app: faust.types.AppT, topic: str) -> set[int]:
    """The partitions of `topic` this worker holds as active (not standby) in Faust's assignment."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


async def read_uncommitted_from_start(app: faust.types.AppT) -> set[TP]:
    """Seek the assigned stream partitions that have no committed offset (or 0) to their start;
    returns them. Run on `on_rebalance_complete`, which Faust sends before it seeks the others."""
    from faust.transport.consumer import Consumer

    consumer = app.consumer
    assert isinstance(consumer, Consumer)  # seek_to_committed is the base class's, not in ConsumerT
    changelogs = set(app.tables.changelog_topics)
    streams = {tp for tp in consumer.assignment() if tp.topic not in changelogs}
    committed = await consumer.seek_to_committed()
    fresh = {tp for tp in streams if not committed.get(tp)}
    if fresh:
        for tp, offset in (await consumer.earliest_offsets(*fresh)).items():
            await consumer.seek(tp, offset)
    return fresh
