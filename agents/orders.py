"""Orders agent (topic `order-events`, partitioned by order): each event decided by agents.order_flow.

The only writer of `order_to_state` and the numberer of the `order:{id}` channel. Outputs and the
state go together (TOGETHER): a replay after a crash decides the same events against the same state
again, so it sends the same pushes under the same seqs (the gateway drops a seq it has) and the same
`orders` snapshot under the same version. Events come from any system (HTTP, the legacy bridge, a
Kafka producer) and from the driver desk (the courier's moves); the courier's desk is asked, on
`offers`, to CARRY an order or DROP it.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Sequence

from agents.errors import Rejected
from agents.notify_triggers import order_notification
from agents.order_flow import OrderPolicy, apply_order_event
from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.topics import NOTIFICATION_REQUESTS, OFFERS, ORDERS, PUSH, RIDE_COMMANDS
from tables.table import Table
from tables.transaction import TOGETHER, Transaction

__all__ = ["OrdersAgent"]

log = logging.getLogger(__name__)


class OrdersAgent:
    """Applies OrderEvent records to `order_to_state`; pushes, snapshots and courier commands out."""

    name = "orders"
    order = TOGETHER

    def __init__(self, *, orders: Table[typed.Order], dead_letters: DeadLetters, policy: OrderPolicy,
                 clock_ms: Callable[[], int]) -> None:
        self.orders = orders
        self.dead_letters = dead_letters
        self.policy = policy
        self.clock_ms = clock_ms
        self.event_codec = typed_codec(records.OrderEvent, typed.OrderEvent)
        self.order_codec = typed_codec(records.Order, typed.Order)
        self.push_codec = typed_codec(records.PushMessage, typed.PushMessage)
        self.offer_codec = typed_codec(records.OfferCommand, typed.OfferCommand)
        self.ride_codec = typed_codec(records.RideCommand, typed.RideCommand)
        self.notify_codec = typed_codec(records.NotificationRequest, typed.NotificationRequest)
        self.outcomes: Counter[str] = Counter()

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        ev: typed.OrderEvent = decode(self.event_codec, record)
        if record.key is not None and record.key != ev["order_id"].encode():
            raise Rejected("record key is not the event's order_id")
        prev = self.orders.get(ev["order_id"], record.partition)
        step = apply_order_event(prev, ev, self.policy, self.clock_ms())
        self.outcomes[step.outcome] += 1
        if step.refusal is not None:
            raise Rejected(step.refusal)
        tx.join(self.orders, ev["order_id"])  # a duplicate's nothing still waits its turn
        if step.order is not None:
            order = step.order
            tx.put(self.orders, order["order_id"], order, record.partition)
            tx.send(ORDERS.name, self.order_codec.dumps(order), key=order["order_id"].encode())
            if (n := order_notification(prev, order)) is not None:  # the customer's (agents.notify_triggers)
                tx.send(NOTIFICATION_REQUESTS.name, self.notify_codec.dumps(n), key=n["user_id"].encode())
        for p in step.pushes:
            tx.send(PUSH.name, self.push_codec.dumps(p), key=p["channel"].encode())
        for c in step.couriers:
            tx.send(OFFERS.name, self.offer_codec.dumps(c), key=c["driver_id"].encode())
        for t in step.trips:
            tx.send(RIDE_COMMANDS.name, self.ride_codec.dumps(t), key=t["ride_id"].encode())

    def end(self, tx: Transaction) -> None:
        return None

    def aborted(self) -> None:
        return None
