"""The legacy bridge on the real servers: PostgreSQL queue rows -> Debezium (Kafka Connect) -> `legacy-order-events`.

Each scenario commits 10,000 queue rows from 8 concurrent writers over 200 orders in flight, some
transactions rolled back, and checks the topic against the table: after dropping repeated row_ids,
every committed row exactly once, each order's events in commit (seq) order, no rolled-back row.
Then the same with the Connect worker SIGKILLed midway and restarted, and with PostgreSQL restarted
midway, the writers writing on meanwhile. `pytest tests/integration/test_legacy_bridge.py -s`
prints the figures docs/legacy.md quotes.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import psutil
import psycopg
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from infra.connect import LocalConnect, wait_running
from infra.postgres import LocalPostgres
from infra.settings import Settings
from infra.topics import end_offsets, record_position
from legacy.jobs import LegacyJob, Written, run_writers
from schemas.topics import LEGACY_ORDER_EVENTS

pytestmark = pytest.mark.integration

TOPIC = LEGACY_ORDER_EVENTS.name
EVENTS = 10_000
WRITERS = 8
ORDERS = 200
ROLLBACK_P = 0.05
RATE_HZ = 700.0  # steps a second: ~15 s of writing, so a disruption lands mid-stream
ARRIVAL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Received:
    partition: int
    offset: int
    key: str
    payload: dict[str, object]
    headers: dict[str, str]
    at: float  # wall clock (epoch s) when this test's consumer had it


@dataclass
class Collector:
    """Reads the topic from given offsets in a thread of its own, as a downstream consumer would."""

    settings: Settings
    since: dict[int, int]
    got: list[Received] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        c = Consumer({"bootstrap.servers": self.settings.bootstrap, "group.id": "legacy-bridge-test",
                      "enable.auto.commit": False})
        c.assign([TopicPartition(TOPIC, p, o) for p, o in self.since.items()])
        try:
            while not self.stop.is_set():
                m = c.poll(0.2)  # not consume(n, timeout): that waits for n records or the timeout, skewing `at`
                if m is not None and m.error() is None:
                    self.got.append(self._decode(m))
        finally:
            c.close()

    @staticmethod
    def _decode(m: Message) -> Received:
        partition, offset = record_position(m)
        raw = m.headers() or []
        items = raw.items() if isinstance(raw, dict) else raw
        headers = {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in items}
        return Received(partition, offset, bytes(m.key() or b"").decode(), json.loads(m.value() or b"null"), headers,
                        time.time())

    def row_ids(self) -> set[int]:
        return {int(r.headers["row_id"]) for r in list(self.got)}


def _committed_rows(dsn: str, prefix: str) -> dict[int, tuple[str, int]]:
    """The table's truth: row id -> (order id, seq) of every committed row of this scenario."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, aggregateid, (payload->>'seq')::int FROM order_events WHERE aggregateid LIKE %s",
                            (f"{prefix}-%",)).fetchall()
    return {int(i): (str(order), int(seq)) for i, order, seq in rows}


def _wait_arrival(collector: Collector, want: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not want - collector.row_ids():
            return
        time.sleep(0.25)
    missing = sorted(want - collector.row_ids())
    raise AssertionError(f"{len(missing)} committed rows never reached {TOPIC} in {timeout_s:.0f}s: {missing[:10]}")


def _check(received: list[Received], committed: dict[int, tuple[str, int]], rolled_back: set[int], prefix: str) -> int:
    """Every committed row once after dedupe, per order in seq order, none rolled back; returns the duplicates."""
    mine = [r for r in received if r.key.startswith(f"{prefix}-")]
    ids = [int(r.headers["row_id"]) for r in mine]
    assert not rolled_back & set(ids), f"rolled-back rows published: {sorted(rolled_back & set(ids))[:10]}"
    seen: set[int] = set()
    per_order: dict[str, list[int]] = defaultdict(list)
    for r, row_id in zip(mine, ids):
        if row_id in seen:
            continue
        seen.add(row_id)
        assert r.key == r.payload["order_id"] == committed[row_id][0]
        assert r.headers["event_type"] == r.payload["status"]
        per_order[r.key].append(int(str(r.payload["seq"])))
    assert seen == set(committed), f"{len(set(committed) - seen)} missing, {len(seen - set(committed))} unknown"
    expected: dict[str, list[int]] = defaultdict(list)
    for order, seq in committed.values():
        expected[order].append(seq)
    for order, seqs in per_order.items():
        assert seqs == sorted(expected[order]), f"{order}: topic order {seqs}"  # commit order: seq 1, 2, ...
    return len(ids) - len(seen)


async def _scenario(settings: Settings, dsn: str, prefix: str, disrupt: Callable[[], Awaitable[None]] | None = None, *,
                    events: int = EVENTS, rate_hz: float = RATE_HZ) -> tuple[Collector, list[Written], int]:
    """Write `events` rows (disrupted when half are in), wait for all to arrive, check; the duplicates count."""
    collector = Collector(settings, end_offsets(settings, TOPIC))
    reader = threading.Thread(target=collector.run, daemon=True)
    reader.start()
    halfway = asyncio.Event()
    committed_so_far = 0

    def on_written(w: Written) -> None:
        nonlocal committed_so_far
        committed_so_far += w.committed
        if committed_so_far >= events // 2:
            halfway.set()

    started = time.monotonic()
    try:
        job = LegacyJob(prefix, orders=ORDERS, rng=random.Random(prefix))
        writing = asyncio.ensure_future(run_writers(dsn, job, events=events, writers=WRITERS, rollback_p=ROLLBACK_P,
                                                    rate_hz=rate_hz, on_written=on_written))
        if disrupt is not None:
            await asyncio.wait_for(halfway.wait(), 60)
            await disrupt()
        written = list(await asyncio.wait_for(writing, 120))
        committed = _committed_rows(dsn, prefix)
        assert {w.row_id for w in written if w.committed} <= set(committed)
        assert len(committed) >= events
        await asyncio.to_thread(_wait_arrival, collector, set(committed), ARRIVAL_TIMEOUT_S)
    finally:
        collector.stop.set()
        reader.join(10)
    rolled_back = {w.row_id for w in written if not w.committed}
    assert len(rolled_back) > events * ROLLBACK_P / 2  # the scenario did roll transactions back
    duplicates = _check(collector.got, committed, rolled_back, prefix)
    print(f"\n[{prefix}] {len(committed)} rows committed, {len(rolled_back)} rolled back, {len(collector.got)} records "
          f"({duplicates} duplicates) in {time.monotonic() - started:.1f} s; longest gap between records "
          f"{_longest_gap_s(collector):.1f} s")
    return collector, written, duplicates


def _longest_gap_s(collector: Collector) -> float:
    """The longest wait between two records reaching this test's consumer (an outage, seen downstream)."""
    times = sorted(r.at for r in collector.got)
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def _latency_ms(collector: Collector, written: list[Written]) -> tuple[float, float]:
    """Commit-to-topic latency (the writer's commit returned -> this test's consumer had the record), p50 and p95."""
    first: dict[int, float] = {}
    for r in collector.got:
        first.setdefault(int(r.headers["row_id"]), r.at)
    lat = sorted((first[w.row_id] - w.at) * 1000 for w in written if w.committed and w.row_id in first)
    return statistics.median(lat), lat[int(len(lat) * 0.95)]


async def test_committed_rows_reach_the_topic_once_in_order_and_rolled_back_ones_never(
    legacy_settings: Settings, legacy_dsn: str, connect_worker: LocalConnect,
) -> None:
    pid = connect_worker.pid()
    assert pid is not None
    jvm = psutil.Process(pid)
    cpu_before, started = sum(jvm.cpu_times()[:2]), time.monotonic()
    collector, written, _ = await _scenario(legacy_settings, legacy_dsn, "plain")
    cpu = (sum(jvm.cpu_times()[:2]) - cpu_before) / (time.monotonic() - started)
    p50, p95 = _latency_ms(collector, written)
    print(f"[plain] commit-to-topic p50 {p50:.1f} ms, p95 {p95:.1f} ms at {RATE_HZ:.0f} steps/s; Connect JVM "
          f"RSS {jvm.memory_info().rss / 2**20:.0f} MiB, CPU {cpu:.0%} of a core")


async def test_commit_to_topic_latency_at_a_steady_rate(
    legacy_settings: Settings, legacy_dsn: str, connect_worker: LocalConnect,
) -> None:
    rate = 100.0
    collector, written, _ = await _scenario(legacy_settings, legacy_dsn, "steady", events=2_000, rate_hz=rate)
    p50, p95 = _latency_ms(collector, written)
    print(f"[steady] commit-to-topic p50 {p50:.1f} ms, p95 {p95:.1f} ms at {rate:.0f} steps/s")
    assert p95 < 2_000  # generous: the machine is shared; docs/legacy.md has the figures


async def test_a_sigkilled_connect_worker_resumes_without_losing_rows(
    legacy_settings: Settings, legacy_dsn: str, connect_worker: LocalConnect,
) -> None:
    async def kill_and_restart() -> None:
        pid = connect_worker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(1.0)  # the writers go on meanwhile
        started = time.monotonic()
        await asyncio.to_thread(connect_worker.start)
        await asyncio.to_thread(wait_running, legacy_settings, 60)
        print(f"\n[sigkill] Connect restarted: REST and connector RUNNING {time.monotonic() - started:.1f} s after start")

    _, _, duplicates = await _scenario(legacy_settings, legacy_dsn, "sigkill", kill_and_restart)
    print(f"[sigkill] {duplicates} records sent again after the kill (offsets flushed every "
          f"{legacy_settings.connect_offset_flush_ms} ms)")


async def test_a_restarted_postgres_is_followed_without_losing_rows(
    legacy_settings: Settings, legacy_dsn: str, connect_worker: LocalConnect,
) -> None:
    server = LocalPostgres(legacy_settings)

    async def restart() -> None:
        started = time.monotonic()
        await asyncio.to_thread(server.stop)  # fast shutdown: open transactions roll back
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(wait_running, legacy_settings, 60)
        print(f"\n[pg-restart] PostgreSQL stopped (fast) and started again in {time.monotonic() - started:.1f} s")

    _, _, duplicates = await _scenario(legacy_settings, legacy_dsn, "pgrestart", restart)
    print(f"[pg-restart] {duplicates} records sent again after the restart")
