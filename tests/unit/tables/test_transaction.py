"""tables.transaction with tables.table: what commits after what, and what the store holds when."""
from __future__ import annotations

import asyncio
import itertools
from typing import Any

import faust
import pytest

from schemas import records, typed
from schemas.avro import typed_codec
from tables.table import Table
from tables.transaction import STATE_FIRST, TOGETHER, Transaction, commit
from tests.unit.agents.harness import FakeKafka

_apps = itertools.count()


def _hold(kafka: FakeKafka) -> asyncio.Event:
    """The next wait for acks lasts until the returned event is set."""
    acked = asyncio.Event()
    kafka.during_wait.append(acked.wait)
    return acked


def _pushes(kafka: FakeKafka) -> list[bytes | None]:
    """The keys of the `push` records, in send order."""
    return [key for topic, key, _ in kafka.order if topic == "push"]


def _table() -> Table[typed.Watermark]:
    app = faust.App(f"test-tx-{next(_apps)}", broker="memory://", store="memory://")
    ft = app.Table("partition_to_watermark", partitions=1)
    return Table(ft, typed_codec(records.Watermark, typed.Watermark), cache_max=100, actives=lambda: [0])


def _mark(ts: int) -> typed.Watermark:
    return {"ts": ts}


def _tx(table: Table[typed.Watermark], key: str, ts: int, order: Any = TOGETHER) -> Transaction:
    tx = Transaction(order)
    tx.put(table, key, _mark(ts), 0)
    tx.send("push", b"x", key=key.encode())
    return tx


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_transactions_on_other_keys_commit_while_an_earlier_one_waits_for_its_acks() -> None:
    table, kafka = _table(), FakeKafka()
    acked = _hold(kafka)
    first = asyncio.ensure_future(commit(_tx(table, "a", 1), kafka))  # type: ignore[arg-type]
    await _settle()
    await asyncio.wait_for(commit(_tx(table, "b", 2), kafka), 1.0)  # type: ignore[arg-type]
    assert _pushes(kafka) == [b"a", b"b"]
    assert table.store.get(b"b", 0) is not None and table.store.get(b"a", 0) is None and not first.done()
    acked.set()
    await asyncio.wait_for(first, 1.0)
    assert table.store.get(b"a", 0) is not None


async def test_a_transaction_on_the_same_key_produces_only_once_the_earlier_one_committed() -> None:
    table, kafka = _table(), FakeKafka()
    acked = _hold(kafka)  # the first's state phase (state first: its output waits for it)
    first = asyncio.ensure_future(commit(_tx(table, "a", 1, STATE_FIRST), kafka))  # type: ignore[arg-type]
    await _settle()
    second = asyncio.ensure_future(commit(_tx(table, "a", 2), kafka))  # type: ignore[arg-type]
    await _settle()
    assert _pushes(kafka) == []  # neither the first's output nor the second
    acked.set()
    await asyncio.wait_for(asyncio.gather(first, second), 1.0)
    assert _pushes(kafka) == [b"a", b"a"]
    assert table.codec.loads(table.store.get(b"a", 0) or b"")["ts"] == 2


async def test_joining_the_whole_table_orders_after_everything_before_and_before_everything_after() -> None:
    table, kafka = _table(), FakeKafka()
    acked = _hold(kafka)
    before = asyncio.ensure_future(commit(_tx(table, "a", 1), kafka))  # type: ignore[arg-type]
    await _settle()
    everyone = Transaction(TOGETHER)
    everyone.join(table)
    everyone.send("push", b"all", key=b"all")
    middle = asyncio.ensure_future(commit(everyone, kafka))  # type: ignore[arg-type]
    after = asyncio.ensure_future(commit(_tx(table, "b", 3), kafka))  # type: ignore[arg-type]
    await _settle()
    assert _pushes(kafka) == [b"a"]
    acked.set()
    await asyncio.wait_for(asyncio.gather(before, middle, after), 1.0)
    assert _pushes(kafka) == [b"a", b"all", b"b"]


async def test_an_aborted_transaction_lets_the_later_ones_go() -> None:
    table, kafka = _table(), FakeKafka()
    dropped = _tx(table, "a", 1)
    later = asyncio.ensure_future(commit(_tx(table, "a", 2), kafka))  # type: ignore[arg-type]
    await _settle()
    assert not later.done()
    dropped.abort()
    await asyncio.wait_for(later, 1.0)
    assert table.codec.loads(table.store.get(b"a", 0) or b"")["ts"] == 2


async def test_the_stored_changelog_offset_never_moves_back() -> None:
    table, kafka = _table(), FakeKafka()
    acked = _hold(kafka)
    slow = asyncio.ensure_future(commit(_tx(table, "a", 1), kafka))  # type: ignore[arg-type]  # offset 0
    await _settle()
    await asyncio.wait_for(commit(_tx(table, "b", 2), kafka), 1.0)  # type: ignore[arg-type]  # offset 1
    assert table.store.persisted_offset(0) == 1
    acked.set()
    await asyncio.wait_for(slow, 1.0)
    assert table.store.persisted_offset(0) == 1  # "a" (offset 0) was stored last: recovery starts past both


@pytest.mark.parametrize("keys", [10_000])
async def test_finished_transactions_are_forgotten(keys: int) -> None:
    table, kafka = _table(), FakeKafka()
    for i in range(keys):
        await commit(_tx(table, f"k{i}", i), kafka)  # type: ignore[arg-type]
    assert not table._last
