"""One table as its owner reads and writes it: decoded values, a cache, the local store by partition.

Writes go through a Transaction (tables.transaction), which commits them in a declared order:
the changelog record acked first, then the local store. Reads see every value decided so far,
committed or still on its way (the cache), so two transactions of the same owner never lose
each other's writes; the store only ever holds acked values, so it is never ahead of its
changelog and Faust's recovery (from the store's persisted offset) stays exact.

Commit order: a transaction that writes a key, or sends on a channel a key owns (a driver's
pushes: it joins the key), commits after every earlier transaction on that key (`after`). So a
key's changelog records, its store writes and its channel's pushes follow decision order, and one
retrying a failed produce holds back the later ones on its keys, while transactions on other keys
go on concurrently. Their store writes may then land in any order; the stored changelog offset
never moves backwards. A crash may so leave a store whose offset is past an acked record of another
key that is not stored yet: that record's transaction had not committed its input, whose replay
decides it again.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

import faust.types

from infra.faustcompat import PartitionStore, active_partitions, changelog_topic, store_of
from schemas.avro import AvroCodec

__all__ = ["Table"]

V = TypeVar("V", bound=Mapping[str, Any])
_MISSING: Any = object()


class Table(Generic[V]):
    """A Faust table with bytes keys and Avro values, written by one owner through transactions."""

    def __init__(self, table: faust.types.TableT[Any, Any], codec: AvroCodec[V], *, cache_max: int,
                 actives: Callable[[], Iterable[int]] | None = None) -> None:
        self.faust = table
        self.name: str = table.name
        self.codec = codec
        self.cache_max = cache_max
        self._store: PartitionStore | None = None
        self.changelog = changelog_topic(table)
        # The partitions this worker holds as active (not standby): Faust's assignment of the changelog.
        self.actives: Callable[[], Iterable[int]] = actives or (lambda: active_partitions(table.app, self.changelog))
        self._cache: dict[str, V | None] = {}  # decided values, committed or not; None: absent
        self._pending: dict[str, int] = {}  # keys with decided writes not in the store yet
        self._last: dict[str, asyncio.Event] = {}  # key -> the latest transaction on it, until done
        self._everything: asyncio.Event | None = None  # the latest transaction on the whole table
        self._offsets: dict[int, int] = {}  # the highest changelog offset stored, per partition

    @property
    def store(self) -> PartitionStore:
        """The local store (Faust makes it on first use, once the app is configured)."""
        if self._store is None:
            self._store = store_of(self.faust)
        return self._store

    # --- reads ----------------------------------------------------------------------------------
    def get(self, key: str, partition: int) -> V | None:
        """The latest decided value of `key` (in `partition`, where the store holds it)."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        raw = self.store.get(key.encode(), partition)
        value: V | None = self.codec.loads(raw) if raw is not None else None
        self._cache[key] = value
        return value

    def get_any(self, key: str) -> V | None:
        """The stored value of `key` in whichever partition this worker holds it (a lookup across
        partitions, for readers that are not the owner)."""
        raw = self.store.get_any(key.encode())
        value: V | None = self.codec.loads(raw) if raw is not None else None
        return value

    def stored(self, partitions: Iterable[int] | None = None) -> Iterator[tuple[str, V]]:
        """Every (key, value) the store holds for `partitions` (None: every active partition)."""
        loads: Callable[[bytes], V] = self.codec.loads
        for partition in sorted(self.actives() if partitions is None else partitions):
            for key, raw in self.store.items(partition):
                yield key.decode(), loads(raw)

    # --- what transactions do ---------------------------------------------------------------------
    def _decide(self, key: str, value: V | None, *, first: bool) -> Any:
        """Make `value` the latest (`first`: the transaction's first write of `key`, which its store
        write settles); returns what was there, for an undo."""
        previous = self._cache.get(key, _MISSING)
        self._cache[key] = value
        if first:
            self._pending[key] = self._pending.get(key, 0) + 1
        return previous

    def _undo(self, key: str, previous: Any, *, first: bool) -> None:
        if previous is _MISSING:
            self._cache.pop(key, None)
        else:
            self._cache[key] = previous
        if first:
            self._settle(key)

    def _settle(self, key: str) -> None:
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def _write(self, partition: int, items: list[tuple[str, bytes | None]], offset: int | None) -> None:
        """Acked changelog values into the local store, with the offset they reach."""
        if offset is not None:
            stored = self._offsets.get(partition)
            if stored is None:
                stored = self.store.persisted_offset(partition)
            if stored is not None and stored > offset:
                offset = stored  # written after a later transaction's records: recovery starts past both
            self._offsets[partition] = offset
        self.store.write(partition, [(k.encode(), v) for k, v in items], offset)
        for key, _ in items:
            self._settle(key)
        self._trim()

    def _trim(self) -> None:
        """Keep the cache near `cache_max`, never dropping a value the store does not have yet."""
        if len(self._cache) <= self.cache_max:
            return
        excess = len(self._cache) - self.cache_max * 3 // 4
        for key in [k for k in self._cache if k not in self._pending][:excess]:
            del self._cache[key]

    # --- commit order -------------------------------------------------------------------------------
    def after(self, key: str | None, done: asyncio.Event) -> list[asyncio.Event]:
        """The transaction whose `done` this is comes after every earlier one on `key` (None: on every
        key of the table); what it must wait for before it produces."""
        earlier = [self._everything] if self._everything is not None else []
        if key is None:
            earlier += self._last.values()
            self._last.clear()  # later ones wait for this one, which waits for those
            self._everything = done
        else:
            previous = self._last.get(key)
            if previous is not None:
                earlier.append(previous)
            self._last[key] = done
        return [e for e in earlier if e is not done and not e.is_set()]

    def done_with(self, keys: Iterable[str | None], done: asyncio.Event) -> None:
        """The transaction whose `done` this is has finished: forget it where it is still the latest."""
        for key in keys:
            if key is None:
                if self._everything is done:
                    self._everything = None
            elif self._last.get(key) is done:
                del self._last[key]

    def forget(self) -> None:
        """Drop cached values (partitions moved; recovery may have rewritten the store)."""
        self._cache.clear()
        self._pending.clear()
        self._offsets.clear()
