"""An order's life (pure): what one OrderEvent does to one order, decided against its state.

`TRANSITIONS` says which status may follow which. An event, against the order it names, is:

- a *duplicate* when its `event_id` is in the timeline already (a retry, a replay): nothing;
- *late* when its status is one the order has passed and its source time is not after the
  current status's: kept in the timeline (`late`), the status does not move back;
- a *transition* when TRANSITIONS allows it: the new status, a timeline step, a push;
- *refused* otherwise (illegal, unknown order, missing field): `OrderStep.refusal` says why, and
  the agent dead-letters it;
- COURIER_MOVED, from the order's courier and newer than its last position: the courier's
  position and a new ETA to the drop-off, pushed; ARRIVING, decided here, once the courier of an
  order OUT_FOR_DELIVERY is within the policy's distance or ETA of the drop-off.

While an order has a courier and is not final, the courier's desk is asked to CARRY it (the moves
come here); a new courier or a final status DROPs it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agents.commands import offer_command, ride_command
from agents.estimates import SpeedLookup, travel_time_s
from agents.geo import haversine_m
from agents.trips import ORDERS_ACTOR
from infra.settings import Settings
from schemas import typed
from schemas.records import ORDER_STATUSES

__all__ = [
    "FINAL", "ME", "TRANSITIONS", "TRACKED", "TRIP_COMMANDS", "OrderPolicy", "OrderStep", "apply_order_event",
    "order_channel", "order_view", "trip_id_of",
]

Order = typed.Order
Event = typed.OrderEvent

ME = "livetrack"  # the source of what the pipeline decides itself (ARRIVING, the courier's moves)
FINAL = frozenset({"DELIVERED", "FAILED", "CANCELLED"})
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "CREATED": ("CONFIRMED", "CANCELLED", "FAILED"),
    "CONFIRMED": ("COURIER_ASSIGNED", "CANCELLED", "FAILED"),
    "COURIER_ASSIGNED": ("COURIER_ASSIGNED", "PICKED_UP", "CANCELLED", "FAILED"),  # again: another courier
    "PICKED_UP": ("OUT_FOR_DELIVERY", "FAILED"),
    "OUT_FOR_DELIVERY": ("ARRIVING", "DELIVERED", "FAILED"),
    "ARRIVING": ("DELIVERED", "FAILED"),
    "DELIVERED": (), "FAILED": (), "CANCELLED": (),
}
# The statuses in which the courier's moves reach the order.
TRACKED = frozenset({"COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "ARRIVING"})
_RANK = {s: i for i, s in enumerate(ORDER_STATUSES[:7])}  # the main line; FAILED and CANCELLED end it
STATUS_PRIORITY = 8  # an acked event on the customer's screen
MOVE_PRIORITY = 3  # like a driver's move: coalescable
STATUS_TTL_MS = 3_600_000
TIMELINE_MAX = 64


@dataclass(frozen=True)
class OrderPolicy:
    """When the pipeline says ARRIVING, and how fast couriers travel (ETAs)."""

    arriving_m: float
    arriving_eta_s: float
    move_ttl_ms: int
    speed: SpeedLookup
    h3_resolution: int = 9

    @classmethod
    def from_settings(cls, s: Settings, *, speed: SpeedLookup) -> "OrderPolicy":
        return cls(arriving_m=s.order_arriving_m, arriving_eta_s=s.order_arriving_eta_s,
                   move_ttl_ms=s.push_location_ttl_ms, speed=speed, h3_resolution=s.h3_resolution)


@dataclass
class OrderStep:
    """What one event did: the order after it (None: unchanged), its pushes and courier commands."""

    outcome: str  # applied | late | moved | duplicate | stale | refused
    order: Order | None = None
    pushes: list[typed.PushMessage] = field(default_factory=list)
    couriers: list[typed.OfferCommand] = field(default_factory=list)
    trips: list[typed.RideCommand] = field(default_factory=list)  # to the delivery trip (dispatch)
    refusal: str | None = None


def order_channel(order_id: str) -> str:
    return f"order:{order_id}"


def trip_id_of(order_id: str) -> str:
    """The ride id of an order's delivery trip: an id of its own (an order id may be 64 characters long)."""
    return "trip-" + hashlib.sha256(order_id.encode()).hexdigest()[:24]


# What an order's status asks of its delivery trip (livetrack's dispatch found the courier).
TRIP_COMMANDS = {"PICKED_UP": "START", "DELIVERED": "COMPLETE", "FAILED": "CANCEL", "CANCELLED": "CANCEL"}


def order_view(o: Order) -> dict[str, Any]:
    """The order as a customer sees it: the push payload, the snapshot and GET /v1/orders/{id}."""
    courier = None
    if o["courier_id"]:
        courier = {"id": o["courier_id"], "lat": o["courier_lat"], "lng": o["courier_lng"], "ts": o["courier_ts"]}
    return {
        "order_id": o["order_id"], "customer_id": o["customer_id"], "status": o["status"], "version": o["version"],
        "pickup": {"lat": o["pickup_lat"], "lng": o["pickup_lng"]},
        "dropoff": {"lat": o["dropoff_lat"], "lng": o["dropoff_lng"]},
        "courier": courier, "eta_s": o["eta_s"], "updated_ts": o["updated_ts"],
        "timeline": [{"status": s["status"], "ts": s["ts"], "source": s["source"], "event_id": s["event_id"],
                      "late": s["late"], "reason": s["reason"]} for s in o["timeline"]],
    }


def _refused(reason: str) -> OrderStep:
    return OrderStep("refused", refusal=reason)


def _step(ev: Event, now_ms: int, *, late: bool = False, status: str | None = None, source: str | None = None,
          event_id: str | None = None) -> typed.OrderStep:
    return {"status": status or ev["type"], "ts": ev["ts"], "received_ts": now_ms, "source": source or ev["source"],
            "event_id": event_id or ev["event_id"], "late": late, "reason": ev["reason"]}


class _Apply:
    """One event carried out on a copy of the order."""

    def __init__(self, prev: Order, ev: Event, policy: OrderPolicy, now_ms: int) -> None:
        self.o: Order = {**prev, "timeline": list(prev["timeline"])}
        self.ev, self.p, self.now = ev, policy, now_ms
        self.out = OrderStep("applied", self.o)

    def changed(self, kind: str, priority: int, ttl_ms: int) -> None:
        o = self.o
        o["version"] += 1
        o["updated_ts"] = self.now
        o["push_seq"] += 1
        self.out.pushes.append({
            "channel": order_channel(o["order_id"]), "seq": o["push_seq"], "type": kind, "priority": priority,
            "ttl_ms": ttl_ms, "sent_ts": self.now, "event_ts": self.ev["ts"],
            "data": json.dumps(order_view(o), separators=(",", ":")),
        })

    def courier(self, op: str, courier_id: str) -> None:
        self.out.couriers.append(offer_command(courier_id, op, self.o["order_id"], self.now, "system",
                                               attempt=self.o["version"]))

    def record(self, step: typed.OrderStep) -> None:
        timeline = self.o["timeline"]
        timeline.append(step)
        timeline.sort(key=lambda s: s["ts"])  # stable: same-time steps keep their arrival order
        del timeline[:-TIMELINE_MAX]

    def move_to(self, status: str, step: typed.OrderStep) -> None:
        o, ev = self.o, self.ev
        before = o["courier_id"]
        if status == "COURIER_ASSIGNED":
            o["courier_id"], o["courier_lat"], o["courier_lng"], o["courier_ts"] = ev["courier_id"], None, None, 0
            o["eta_s"] = None
        o["status"], o["status_ts"] = status, max(o["status_ts"], step["ts"])
        self.record(step)
        if before and (status in FINAL or (status == "COURIER_ASSIGNED" and before != o["courier_id"])):
            self.courier("DROP", before)
        if status == "COURIER_ASSIGNED" and o["courier_id"] and o["courier_id"] != before:
            self.courier("CARRY", o["courier_id"])
        self.trip(status)
        self.changed("order.status", STATUS_PRIORITY, STATUS_TTL_MS)

    def trip(self, status: str) -> None:
        """Dispatch's part: a confirmed order that asks for it gets a delivery trip (a ride from pickup to
        drop-off, offered like any ride); the trip starts, completes or ends with its order."""
        o = self.o
        trip = o["trip_id"]
        if status == "CONFIRMED" and o["dispatch"] and not trip:
            o["trip_id"] = trip = trip_id_of(o["order_id"])
            self.out.trips.append(ride_command(
                trip, "REQUEST", self.now, "system", ORDERS_ACTOR, rider_id=o["customer_id"],
                product="standard", pickup_lat=o["pickup_lat"], pickup_lng=o["pickup_lng"],
                dest_lat=o["dropoff_lat"], dest_lng=o["dropoff_lng"], order_id=o["order_id"]))
        elif trip and status in TRIP_COMMANDS:
            self.out.trips.append(ride_command(trip, TRIP_COMMANDS[status], self.now, "system", ORDERS_ACTOR,
                                               reason=f"order {status.lower()}"))

    def moved(self) -> OrderStep:
        o, ev, p = self.o, self.ev, self.p
        assert ev["lat"] is not None and ev["lng"] is not None
        o["courier_lat"], o["courier_lng"], o["courier_ts"] = ev["lat"], ev["lng"], ev["ts"]
        o["eta_s"] = round(travel_time_s(ev["lat"], ev["lng"], o["dropoff_lat"], o["dropoff_lng"], speed=p.speed,
                                         resolution=p.h3_resolution), 1)
        self.out.outcome = "moved"
        if o["status"] == "OUT_FOR_DELIVERY" and self.near():
            arriving = _step(ev, self.now, status="ARRIVING", source=ME, event_id=f"{ME}:{o['order_id']}:arriving")
            self.move_to("ARRIVING", arriving)
        else:
            self.changed("order.location", MOVE_PRIORITY, p.move_ttl_ms)
        return self.out

    def near(self) -> bool:
        o = self.o
        assert o["courier_lat"] is not None and o["courier_lng"] is not None
        metres = haversine_m(o["courier_lat"], o["courier_lng"], o["dropoff_lat"], o["dropoff_lng"])
        eta = o["eta_s"]
        return metres <= self.p.arriving_m or (eta is not None and eta <= self.p.arriving_eta_s)


def _created(ev: Event, policy: OrderPolicy, now_ms: int) -> OrderStep:
    missing = [f for f in ("customer_id", "pickup_lat", "pickup_lng", "dropoff_lat", "dropoff_lng") if ev[f] is None]
    if missing:
        return _refused(f"CREATED needs {', '.join(missing)}")
    assert ev["customer_id"] is not None and ev["pickup_lat"] is not None and ev["pickup_lng"] is not None
    assert ev["dropoff_lat"] is not None and ev["dropoff_lng"] is not None
    unborn: Order = {  # version and seq 0: its first change makes them 1
        "order_id": ev["order_id"], "version": 0, "status": "CREATED", "status_ts": ev["ts"],
        "customer_id": ev["customer_id"], "source": ev["source"], "pickup_lat": ev["pickup_lat"],
        "pickup_lng": ev["pickup_lng"], "dropoff_lat": ev["dropoff_lat"], "dropoff_lng": ev["dropoff_lng"],
        "dispatch": ev["dispatch"], "trip_id": None, "courier_id": None, "courier_lat": None, "courier_lng": None,
        "courier_ts": 0, "eta_s": None, "created_ts": now_ms, "updated_ts": now_ms, "timeline": [_step(ev, now_ms)],
        "push_seq": 0,
    }
    a = _Apply(unborn, ev, policy, now_ms)
    a.changed("order.status", STATUS_PRIORITY, STATUS_TTL_MS)
    return a.out


def _is_late(prev: Order, ev: Event) -> bool:
    """A status the order has passed, stamped no later than the current one: history, not news."""
    passed = ev["type"] in _RANK and prev["status"] in _RANK and _RANK[ev["type"]] < _RANK[prev["status"]]
    before_final = prev["status"] in FINAL and ev["type"] in _RANK and ev["type"] != prev["status"]
    return (passed or before_final) and ev["ts"] <= prev["status_ts"]


def apply_order_event(prev: Order | None, ev: Event, policy: OrderPolicy, now_ms: int) -> OrderStep:
    """Decide one event against the order's state (pure)."""
    kind = ev["type"]
    if prev is None:
        if kind == "CREATED":
            return _created(ev, policy, now_ms)
        return _refused(f"{kind} for an order never created")
    if any(s["event_id"] == ev["event_id"] for s in prev["timeline"]):
        return OrderStep("duplicate")
    if kind == "COURIER_MOVED":
        if ev["lat"] is None or ev["lng"] is None:
            return _refused("COURIER_MOVED needs lat and lng")
        if ev["courier_id"] != prev["courier_id"] or prev["status"] not in TRACKED or ev["ts"] <= prev["courier_ts"]:
            return OrderStep("stale")  # an old courier's, a finished order's, or an older position
        return _Apply(prev, ev, policy, now_ms).moved()
    if kind == "CREATED":
        return _refused("order exists already")
    if _is_late(prev, ev):
        a = _Apply(prev, ev, policy, now_ms)
        a.record(_step(ev, now_ms, late=True))
        a.out.outcome = "late"
        a.changed("order.status", STATUS_PRIORITY, STATUS_TTL_MS)
        return a.out
    if kind not in TRANSITIONS[prev["status"]]:
        return _refused(f"illegal transition {prev['status']} -> {kind}")
    if kind == "COURIER_ASSIGNED" and not ev["courier_id"]:
        return _refused("COURIER_ASSIGNED needs courier_id")
    a = _Apply(prev, ev, policy, now_ms)
    a.move_to(kind, _step(ev, now_ms))
    return a.out
