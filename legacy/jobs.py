"""The legacy platform's scheduled job, simulated: it moves orders through their lifecycle and queues an event for each step.

A step is one transaction: lock the order row (`SELECT ... FOR UPDATE`), update `orders` (status,
seq + 1), insert the `order_events` row, commit. The row lock makes concurrent jobs on one order
take turns, so an order's events commit, and reach the WAL, in seq order. The pure parts (the
lifecycle, the payload) are separate from the wiring (`run_writers`: connections, pacing,
reconnecting after the server restarts).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from infra.clock import now_ms
from legacy.db import LegacyError

__all__ = [
    "FINAL", "STATUSES", "LegacyJob", "LatLng", "OrderEvent", "Written", "event_payload", "next_status", "run_writers",
]

log = logging.getLogger(__name__)

STATUSES = ("CREATED", "CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "ARRIVING", "DELIVERED",
            "FAILED", "CANCELLED")
FINAL = frozenset({"DELIVERED", "FAILED", "CANCELLED"})
# The lifecycle: each status's possible next ones with their weights.
NEXT: dict[str, tuple[tuple[str, float], ...]] = {
    "CREATED": (("CONFIRMED", 0.95), ("CANCELLED", 0.05)),
    "CONFIRMED": (("COURIER_ASSIGNED", 0.95), ("CANCELLED", 0.05)),
    "COURIER_ASSIGNED": (("PICKED_UP", 1.0),),
    "PICKED_UP": (("OUT_FOR_DELIVERY", 1.0),),
    "OUT_FOR_DELIVERY": (("ARRIVING", 0.95), ("FAILED", 0.05)),
    "ARRIVING": (("DELIVERED", 1.0),),
}
REASONS = {"CANCELLED": "customer cancelled", "FAILED": "customer not at home"}


class LatLng(TypedDict):
    lat: float
    lng: float


class OrderEvent(TypedDict):
    """The payload the legacy jobs write (`order_events.payload`, the topic's value)."""

    order_id: str
    status: str
    ts: int  # epoch ms of the event at the source
    seq: int  # the order's event number, 1 for CREATED
    customer_id: NotRequired[str]  # CREATED
    pickup: NotRequired[LatLng]  # CREATED
    dropoff: NotRequired[LatLng]  # CREATED
    courier_id: NotRequired[str]  # COURIER_ASSIGNED
    reason: NotRequired[str]


@dataclass(frozen=True)
class Written:
    """One queue row a job wrote: committed, or rolled back (then it never reaches the topic)."""

    row_id: int
    order_id: str
    seq: int
    status: str
    committed: bool
    at: float  # wall clock (epoch s) when the commit or rollback returned


def next_status(status: str, rng: random.Random) -> str | None:
    """The status an order moves to from `status`; None when it is final."""
    choices = NEXT.get(status)
    if not choices:
        return None
    statuses, weights = zip(*choices)
    return str(rng.choices(statuses, weights)[0])


def event_payload(order_id: str, status: str, seq: int, ts_ms: int, *, reason: str | None = None,
                  courier_id: str | None = None) -> OrderEvent:
    """An event of an existing order (every status but CREATED)."""
    payload: OrderEvent = {"order_id": order_id, "status": status, "ts": ts_ms, "seq": seq}
    if courier_id is not None:
        payload["courier_id"] = courier_id
    if reason is not None:
        payload["reason"] = reason
    return payload


async def _queue(cur: psycopg.AsyncCursor[TupleRow], payload: OrderEvent) -> int:
    await cur.execute(
        "INSERT INTO order_events (aggregateid, type, payload) VALUES (%s, %s, %s) RETURNING id",
        (payload["order_id"], payload["status"], Jsonb(payload)),
    )
    row = await cur.fetchone()
    assert row is not None, "INSERT ... RETURNING gives a row"
    return int(row[0])


async def create_order(conn: psycopg.AsyncConnection[TupleRow], order_id: str, customer_id: str, pickup: LatLng,
                       dropoff: LatLng, *, rollback: bool = False) -> Written:
    """Insert a new order and queue its CREATED event in one transaction (rolled back with `rollback`)."""
    payload: OrderEvent = {"order_id": order_id, "status": "CREATED", "ts": now_ms(), "seq": 1,
                           "customer_id": customer_id, "pickup": pickup, "dropoff": dropoff}
    async with conn.transaction(force_rollback=rollback), conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO orders (id, customer_id, status, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, seq) "
            "VALUES (%s, %s, 'CREATED', %s, %s, %s, %s, 1)",
            (order_id, customer_id, pickup["lat"], pickup["lng"], dropoff["lat"], dropoff["lng"]),
        )
        row_id = await _queue(cur, payload)
    return Written(row_id, order_id, 1, "CREATED", not rollback, time.time())


async def advance_order(conn: psycopg.AsyncConnection[TupleRow], order_id: str, rng: random.Random, *,
                        rollback: bool = False) -> Written | None:
    """Move an order to its next status and queue the event, in one transaction holding the order's
    row lock; None when the order is final or unknown (nothing written)."""
    async with conn.transaction(force_rollback=rollback), conn.cursor() as cur:
        await cur.execute("SELECT status, seq FROM orders WHERE id = %s FOR UPDATE", (order_id,))
        row = await cur.fetchone()
        status = next_status(str(row[0]), rng) if row is not None else None
        if row is None or status is None:
            return None
        seq = int(row[1]) + 1
        courier = f"courier-{rng.randrange(1000):03d}" if status == "COURIER_ASSIGNED" else None
        await cur.execute(
            "UPDATE orders SET status = %s, seq = %s, courier_id = coalesce(%s, courier_id), updated_at = now() "
            "WHERE id = %s", (status, seq, courier, order_id),
        )
        row_id = await _queue(cur, event_payload(order_id, status, seq, now_ms(), reason=REASONS.get(status),
                                                 courier_id=courier))
    return Written(row_id, order_id, seq, status, not rollback, time.time())


@dataclass
class LegacyJob:
    """Keeps `orders` orders in flight: each step advances a random live one, or creates one when
    fewer are live (an order leaves when final). Steps of concurrent writers share this state."""

    prefix: str
    orders: int = 200
    rng: random.Random = field(default_factory=random.Random)
    live: list[str] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def _point(self) -> LatLng:
        return {"lat": round(37.70 + self.rng.random() * 0.1, 6), "lng": round(-122.50 + self.rng.random() * 0.1, 6)}

    def _retire(self, order_id: str) -> None:
        if order_id in self.live:
            self.live.remove(order_id)

    async def step(self, conn: psycopg.AsyncConnection[TupleRow], *, rollback: bool = False) -> Written | None:
        """One transaction of the job; None when the order it picked was final meanwhile."""
        if len(self.live) < self.orders:
            order_id = f"{self.prefix}-{next(self.ids):06d}"
            written = await create_order(conn, order_id, f"customer-{self.rng.randrange(5000):04d}", self._point(),
                                         self._point(), rollback=rollback)
            if written.committed:
                self.live.append(order_id)
            return written
        order_id = self.rng.choice(self.live)
        advanced = await advance_order(conn, order_id, self.rng, rollback=rollback)
        if advanced is None or (advanced.committed and advanced.status in FINAL):
            self._retire(order_id)
        return advanced


@dataclass
class _Pace:
    """Shared by the writers: how many commits are still wanted, at what overall rate."""

    events: int
    rate_hz: float | None
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    committed: int = 0

    async def next(self) -> bool:
        """Wait for the next step's turn; False once enough rows are committed."""
        if self.committed >= self.events:
            return False
        self.attempts += 1
        if self.rate_hz:
            await asyncio.sleep(max(0.0, self.started + self.attempts / self.rate_hz - time.monotonic()))
        return self.committed < self.events


async def _connect(dsn: str, deadline: float) -> psycopg.AsyncConnection[TupleRow]:
    """A connection, tried again until `deadline` (the server may be restarting)."""
    while True:
        try:
            return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=2)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise LegacyError(f"the legacy database stayed unreachable: {exc}") from exc
            await asyncio.sleep(0.2)


async def _writer(dsn: str, job: LegacyJob, pace: _Pace, rollback_p: float, reconnect_s: float,
                  on_written: Callable[[Written], None]) -> None:
    conn = await _connect(dsn, time.monotonic() + reconnect_s)
    try:
        while await pace.next():
            rollback = job.rng.random() < rollback_p
            try:
                written = await job.step(conn, rollback=rollback)
            except psycopg.OperationalError as exc:
                # The server went away, perhaps mid-commit: that row's fate is the database's to say.
                log.info("legacy writer lost its connection (%s); reconnecting", exc)
                await conn.close()
                conn = await _connect(dsn, time.monotonic() + reconnect_s)
                continue
            if written is not None:
                pace.committed += written.committed
                on_written(written)
    finally:
        await conn.close()


async def run_writers(dsn: str, job: LegacyJob, *, events: int, writers: int = 8, rollback_p: float = 0.0,
                      rate_hz: float | None = None, reconnect_s: float = 30.0,
                      on_written: Callable[[Written], None] | None = None) -> Sequence[Written]:
    """Run `writers` concurrent connections doing job steps until `events` rows are committed (at
    `rate_hz` steps a second overall, if given), each step rolled back with probability `rollback_p`.
    Returns every row written; a step cut by a lost connection is not among them (the table says
    whether it committed). A writer reconnects for `reconnect_s` before giving up."""
    out: list[Written] = []

    def record(written: Written) -> None:
        out.append(written)
        if on_written is not None:
            on_written(written)

    pace = _Pace(events, rate_hz)
    await asyncio.gather(*(_writer(dsn, job, pace, rollback_p, reconnect_s, record) for _ in range(writers)))
    return out
