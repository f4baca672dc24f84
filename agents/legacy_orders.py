"""Legacy orders agent (topic `legacy-order-events`, from the legacy platform's queue table): each
committed queue row, as Debezium moved it, becomes an OrderEvent on `order-events`.

Stateless and TOGETHER: the bridge delivers at least once (a Connect worker killed before it
committed its offsets sends rows again), and so does a replay here; the event id is the row id
(`legacy:{row_id}`), so the orders agent drops what it has already applied. The order of one
order's rows is kept: Debezium keys them by order id, and so does `order-events`. A row this agent
cannot read (not JSON, a field missing or of the wrong type) is dead-lettered with the reason.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from agents.commands import order_event
from agents.errors import Rejected
from agents.runtime import DeadLetters
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.records import ID_PATTERN, ORDER_STATUSES
from schemas.topics import ORDER_EVENTS
from tables.transaction import TOGETHER, Transaction

__all__ = ["LEGACY_SOURCE", "LegacyOrdersAgent", "order_event_of"]

LEGACY_SOURCE = "legacy"
ID_RE = re.compile(ID_PATTERN)


def _number(payload: dict[str, Any], point: str, axis: str) -> float:
    where = payload.get(point)
    v = where.get(axis) if isinstance(where, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Rejected(f"{point}.{axis} must be a number")
    return float(v)


def order_event_of(key: bytes | None, row_id: bytes | None, value: bytes | None) -> typed.OrderEvent:
    """A queue row (key: order id, header row_id, value: the payload JSON) as its OrderEvent; Rejected
    naming what is wrong with it."""
    if row_id is None or not row_id.isdigit():
        raise Rejected("no row_id header (a decimal row id)")
    try:
        payload = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(f"payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected("payload is not a JSON object")
    order_id, status, ts = payload.get("order_id"), payload.get("status"), payload.get("ts")
    if not (isinstance(order_id, str) and ID_RE.fullmatch(order_id)):
        raise Rejected("order_id must be an id")
    if key is not None and key != order_id.encode():
        raise Rejected("record key is not the payload's order_id")
    if status not in ORDER_STATUSES:
        raise Rejected(f"status must be one of {', '.join(ORDER_STATUSES)}")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise Rejected("ts must be epoch milliseconds")
    ev = order_event(order_id, f"{LEGACY_SOURCE}:{row_id.decode()}", LEGACY_SOURCE, status, ts)
    if status == "CREATED":
        customer = payload.get("customer_id")
        if not (isinstance(customer, str) and ID_RE.fullmatch(customer)):
            raise Rejected("CREATED needs customer_id (an id)")
        ev["customer_id"] = customer
        ev["pickup_lat"], ev["pickup_lng"] = _number(payload, "pickup", "lat"), _number(payload, "pickup", "lng")
        ev["dropoff_lat"], ev["dropoff_lng"] = _number(payload, "dropoff", "lat"), _number(payload, "dropoff", "lng")
    courier, reason = payload.get("courier_id"), payload.get("reason")
    if status == "COURIER_ASSIGNED" and not (isinstance(courier, str) and ID_RE.fullmatch(courier)):
        raise Rejected("COURIER_ASSIGNED needs courier_id (an id)")
    if isinstance(courier, str):
        ev["courier_id"] = courier
    if isinstance(reason, str):
        ev["reason"] = reason[:500]
    return ev


class LegacyOrdersAgent:
    """Turns the legacy queue's rows into OrderEvents."""

    name = "legacy_orders"
    order = TOGETHER

    def __init__(self, *, dead_letters: DeadLetters) -> None:
        self.dead_letters = dead_letters
        self.codec = typed_codec(records.OrderEvent, typed.OrderEvent)
        self.bridged = 0

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        ev = order_event_of(record.key, record.header("row_id"), record.value)
        tx.send(ORDER_EVENTS.name, self.codec.dumps(ev), key=ev["order_id"].encode())
        self.bridged += 1

    def end(self, tx: Transaction) -> None:
        return None

    def aborted(self) -> None:
        return None
