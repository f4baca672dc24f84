"""What an agent step decided, and the one protocol that commits it.

A Transaction collects table writes, output records and dead letters while an agent decides a
batch; `commit` then makes them durable in the transaction's declared Order: each phase's
records (changelog records of its tables, and/or the outputs) are produced and every ack is
awaited; then the phase's tables are written to the local store (values and changelog offset in
one write batch); then the next phase. The caller commits the input offsets after the last phase.

So the store is never ahead of its changelog, and a crash between any two steps leaves a state
that replaying the uncommitted input rebuilds: values not acked were never stored; values acked
but not stored come back through Faust's recovery from the changelog (or, where a later write of
another key moved the stored offset past them, are decided again by that replay); outputs are
re-sent by the replay (the agents make a replay re-send what the first run sent, under the same seqs).

The default order produces outputs and changelogs together (one round trip). Dispatch declares
STATE_FIRST: its state (which records what it sent) is durable before anyone can see an output,
so a replay always finds the decision it must repeat. The features agent declares its own.

Transient produce errors (a broker unavailable past the producer's own retries) are retried here
with bounded exponential backoff, sending again only the records that failed; a record Kafka
refuses for good (too large) raises ProduceError, which the agent runtime treats as a bug.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from infra.producer import AsyncProducer, Outgoing, ProduceError
from tables.table import Table

__all__ = [
    "ALL_TABLES", "OUTPUTS", "STATE_FIRST", "TOGETHER", "Backoff", "Order", "Savepoint", "Transaction", "commit",
    "removals",
]

log = logging.getLogger(__name__)

OUTPUTS = "outputs"  # output records and dead letters
ALL_TABLES = "*"  # every table not named elsewhere in the order
Fault = Callable[[str], None]  # called after each commit step with its name (tests inject crashes there)
AnyTable = Table[Any]
V = TypeVar("V", bound=Mapping[str, Any])


def removals(table: str) -> str:
    """The part of an order holding `table`'s deletions, when they must wait for a later phase."""
    return f"{table}:removals"


@dataclass(frozen=True)
class Order:
    """Phases in commit order; each is a set of parts: OUTPUTS, table names, removals(name), ALL_TABLES."""

    name: str
    phases: tuple[frozenset[str], ...]

    def phase_of(self, part: str) -> int | None:
        for i, phase in enumerate(self.phases):
            if part in phase:
                return i
        return None

    def table_phases(self, table: str) -> tuple[int, int]:
        """The phases of `table`'s writes and of its deletions."""
        puts = self.phase_of(table)
        if puts is None:
            puts = self.phase_of(ALL_TABLES)
        if puts is None:
            raise ValueError(f"order {self.name!r} has no phase for table {table!r}")
        deletes = self.phase_of(removals(table))
        return puts, puts if deletes is None else deletes


TOGETHER = Order("together", (frozenset({OUTPUTS, ALL_TABLES}),))
STATE_FIRST = Order("state-first", (frozenset({ALL_TABLES}), frozenset({OUTPUTS})))


@dataclass(frozen=True)
class Backoff:
    """Retry delays for transient produce errors: exponential from `first_s`, capped, with jitter."""

    first_s: float = 0.2
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_s, self.first_s * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Savepoint:
    undo: int
    outputs: int
    collected: tuple[tuple[str, int], ...]


class Transaction:
    """Writes, outputs and dead letters of one agent batch, until `commit` makes them durable.

    The table's own reads (`Table.get`) see every value decided so far, this transaction's
    included; `put` and `delete` buffer a write of the key's partition; `send` buffers an output record. A savepoint and
    `rollback` undo what a step did that it must not keep (a rejected record, or a bug).
    """

    def __init__(self, order: Order, name: str = "") -> None:
        self.order = order
        self.name = name
        self._writes: dict[AnyTable, dict[str, tuple[int, Any]]] = {}  # table -> key -> (partition, value)
        self._undo: list[tuple[AnyTable, str, Any, tuple[int, Any] | None]] = []
        self.done = asyncio.Event()  # set once committed or given up: later transactions on its keys go
        self._earlier: list[asyncio.Event] = []  # transactions it commits after (on its keys)
        self._ordered: dict[AnyTable, set[str | None]] = {}  # its keys by table (None: the whole table)
        self.outputs: list[Outgoing] = []
        self._collected: dict[str, list[Any]] = {}
        self.committed: list[Callable[[], None]] = []  # run once the commit is done (before input commit)

    # --- reads and writes -----------------------------------------------------------------------
    def put(self, table: Table[V], key: str, value: V | None, partition: int) -> None:
        """Write `value` (a decoded record, never mutated afterwards) under `key` in `partition`."""
        writes = self._writes.get(table)
        if writes is None:
            writes = self._writes[table] = {}
        self.join(table, key)
        earlier = writes.get(key)
        self._undo.append((table, key, table._decide(key, value, first=earlier is None), earlier))
        writes[key] = (partition, value)

    def delete(self, table: Table[V], key: str, partition: int) -> None:
        self.put(table, key, None, partition)

    def join(self, table: Table[Any], key: str | None = None) -> None:
        """Commit after every earlier transaction on `key` of `table` (None: on any key of it): for the
        keys it writes, and for outputs on channels a key owns (a driver's pushes) when it writes none."""
        keys = self._ordered.setdefault(table, set())
        if key in keys or None in keys:
            return
        keys.add(key)
        self._earlier += table.after(key, self.done)

    def send(self, topic: str, value: bytes | None, *, key: bytes | None = None, partition: int | None = None) -> None:
        self.outputs.append((topic, value, key, partition))

    def collect(self, name: str, item: Any) -> None:
        """Keep `item` for the end of the batch (rolled back with the step that collected it)."""
        self._collected.setdefault(name, []).append(item)

    def collected(self, name: str) -> list[Any]:
        return self._collected.get(name, [])

    @property
    def empty(self) -> bool:
        return not self._writes and not self.outputs

    def wrote(self, table: Table[Any], key: str) -> bool:
        """Whether this transaction has written `key` of `table`."""
        writes = self._writes.get(table)
        return writes is not None and key in writes

    def written(self, table: Table[Any]) -> dict[str, Any]:
        """This transaction's values of `table` by key (None: deleted)."""
        return {key: value for key, (_, value) in self._writes.get(table, {}).items()}

    # --- undo -----------------------------------------------------------------------------------
    def savepoint(self) -> Savepoint:
        return Savepoint(len(self._undo), len(self.outputs), tuple((k, len(v)) for k, v in self._collected.items()))

    def rollback(self, point: Savepoint) -> None:
        """Undo every write, output and collected item since `point`."""
        while len(self._undo) > point.undo:
            table, key, previous, earlier = self._undo.pop()
            table._undo(key, previous, first=earlier is None)
            writes = self._writes[table]
            if earlier is None:
                del writes[key]
            else:
                writes[key] = earlier
        del self.outputs[point.outputs:]
        kept = dict(point.collected)
        for name, items in self._collected.items():
            del items[kept.get(name, 0):]

    def abort(self) -> None:
        """Give up the whole transaction: undo everything, let the next transactions of its tables go."""
        self.rollback(Savepoint(0, 0, ()))
        self._release()

    def _release(self) -> None:
        self.done.set()
        for table, keys in self._ordered.items():
            table.done_with(keys, self.done)

    # --- what each phase produces and stores ----------------------------------------------------------
    def _phase(self, index: int) -> tuple[list[Outgoing], dict[tuple[AnyTable, int], list[tuple[str, bytes | None]]]]:
        records: list[Outgoing] = list(self.outputs) if OUTPUTS in self.order.phases[index] else []
        stores: dict[tuple[AnyTable, int], list[tuple[str, bytes | None]]] = {}
        for table, writes in self._writes.items():
            puts, deletes = self.order.table_phases(table.name)
            if index not in (puts, deletes):
                continue
            dumps, topic = table.codec.dumps, table.changelog
            for key, (partition, value) in writes.items():
                if (deletes if value is None else puts) != index:
                    continue
                raw = None if value is None else dumps(value)
                records.append((topic, raw, key.encode(), partition))
                stores.setdefault((table, partition), []).append((key, raw))
        return records, stores


async def commit(tx: Transaction, producer: AsyncProducer, *, backoff: Backoff = Backoff(),
                 fault: Fault | None = None, retried: Callable[[ProduceError], None] | None = None) -> None:
    """Make `tx` durable, phase by phase, after every transaction ahead of it on its keys."""
    try:
        for earlier in tx._earlier:
            await earlier.wait()
        for i in range(len(tx.order.phases)):
            records, stores = tx._phase(i)
            offsets = await _produce(producer, records, backoff, retried) if records else {}
            if fault is not None:
                fault(f"acked{i}")
            for (table, partition), items in stores.items():
                table._write(partition, items, offsets.get((table.changelog, partition)))
            if fault is not None and stores:
                fault(f"stored{i}")
    finally:
        tx._release()
    for done in tx.committed:
        done()


async def _produce(producer: AsyncProducer, records: Sequence[Outgoing], backoff: Backoff,
                   retried: Callable[[ProduceError], None] | None) -> dict[tuple[str, int], int]:
    """Produce `records` and wait for every ack; send again what failed for a transient cause."""
    offsets: dict[tuple[str, int], int] = {}
    attempt = 0
    pending: Iterable[Outgoing] = records
    while True:
        group = producer.group()
        for topic, value, key, partition in pending:
            producer.send(group, topic, value, key=key, partition=partition)
        try:
            await group.wait()
            return _merged(offsets, group.offsets)
        except ProduceError as exc:
            _merged(offsets, group.offsets)
            if not exc.transient:
                raise
            attempt += 1
            if retried is not None:
                retried(exc)
            delay = backoff.delay(attempt)
            log.warning("produce failed (%s); %d record(s) again in %.1f s (attempt %d)", exc, len(group.failed),
                        delay, attempt)
            await asyncio.sleep(delay)
            pending = list(group.failed)


def _merged(into: dict[tuple[str, int], int], more: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    for tp, offset in more.items():
        if offset > into.get(tp, -1):
            into[tp] = offset
    return into
