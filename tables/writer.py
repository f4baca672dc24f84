"""Batched writes to a Faust table: the store and the changelog once per key per batch.

`table[k] = v` sends each changelog record through Faust's Python producer,
~280 us a write on this machine (`make bench-faust`), which caps a worker
near 2,000 writes/s. Here, as Kafka Streams' record cache does, a batch's
writes stay in memory and `flush` writes only the latest value of each key:
Avro-encoded once, put into the store directly, and sent as the changelog
record (the key bytes and partition Faust would use) through the C producer.
Once the batch is acked the changelog offset is persisted exactly as Faust
does, so recovery, rebalancing and restarts behave as with Faust's writes.

Reads go through a write-through cache of decoded values: one partition has
one writer, so the cache is exact until a rebalance, which clears it.
"""
from __future__ import annotations

from typing import Any

import faust
from faust.types import TP

from agents.batching import bind_event
from infra.producer import AsyncProducer, DeliveryGroup
from schemas.avro import AvroCodec

__all__ = ["TableWriter"]

Value = dict[str, Any]


class TableWriter:
    """Reads and batch-writes one table with bytes keys and Avro values."""

    def __init__(self, table: faust.Table, producer: AsyncProducer, codec: AvroCodec, *, cache_max: int) -> None:
        self.table = table
        self.producer = producer
        self.codec = codec
        self.cache_max = cache_max
        self._cache: dict[str, Value] = {}
        self._dirty: dict[str, faust.EventT] = {}  # key -> an event of its partition
        self._deleted: set[str] = set()  # dirty keys to remove

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def get(self, key: str) -> Value | None:
        """The latest value, this batch's writes included (call with an event of key's partition bound)."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if key in self._deleted:
            return None
        raw = self.table.data.get(key.encode())
        if raw is None:
            return None
        value: Value = self.codec.loads(raw)
        self._remember(key, value)
        return value

    def set(self, key: str, value: Value, event: faust.EventT) -> None:
        """Buffer a write; `event` is any event of the key's partition."""
        self._cache[key] = value
        self._dirty[key] = event
        self._deleted.discard(key)

    def delete(self, key: str, event: faust.EventT) -> None:
        """Buffer a removal (a tombstone in the changelog); `event` is any event of the key's partition."""
        self._cache.pop(key, None)
        self._dirty[key] = event
        self._deleted.add(key)

    def flush(self, group: DeliveryGroup, *, removals: bool = True) -> int:
        """Write (or remove) each buffered key once in the store and the changelog (in `group`); how many.

        With `removals=False` the buffered removals stay buffered, for a later flush: a caller whose
        other tables must be stored first (a crash in between would otherwise lose what a replay needs).
        """
        topic, data, send = self.changelog, self.table.data, self.producer.send
        done = [key for key in self._dirty if removals or key not in self._deleted]
        for key in done:
            event = self._dirty.pop(key)
            bind_event(event)  # the RocksDB store routes by the current event's partition
            key_bytes = key.encode()
            raw: bytes | None = None
            if key in self._deleted:
                self._deleted.discard(key)
                if key_bytes in data:
                    del data[key_bytes]
            else:
                raw = self.codec.dumps(self._cache[key])
                data[key_bytes] = raw
            send(group, topic, raw, key=key_bytes, partition=event.message.partition)
        bind_event(None)
        written = len(done)
        if len(self._cache) > self.cache_max:
            for old in list(self._cache)[: len(self._cache) - self.cache_max * 3 // 4]:
                del self._cache[old]
        return written

    def _remember(self, key: str, value: Value) -> None:
        self._cache[key] = value

    def forget(self) -> None:
        """Drop cached values (partitions moved; recovery may have rewritten the store)."""
        self._cache.clear()
        self._dirty.clear()
        self._deleted.clear()

    def persist_offsets(self, group: DeliveryGroup) -> None:
        """After `group` is acked: remember how far the changelog is already in the store."""
        topic = self.changelog
        for (name, partition), offset in group.offsets.items():
            if name == topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)
