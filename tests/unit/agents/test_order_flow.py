"""agents.order_flow: an order's life, decided event by event (pure)."""
from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from agents.estimates import constant_speed
from agents.order_flow import (
    FINAL, TRANSITIONS, OrderPolicy, apply_order_event, order_view, trip_id_of,
)
from schemas import typed
from schemas.records import ORDER_STATUSES

T0 = 1_700_000_000_000
POLICY = OrderPolicy(arriving_m=150.0, arriving_eta_s=60.0, move_ttl_ms=30_000, speed=constant_speed(8.0))
PICKUP = (60.1699, 24.9384)
DROPOFF = (60.1790, 24.9384)  # ~1 km north
_ids = itertools.count(1)

# The order's life as the product describes it, written out independently of TRANSITIONS.
MAIN_LINE = ["CREATED", "CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "ARRIVING", "DELIVERED"]
ALSO_ALLOWED = {("COURIER_ASSIGNED", "COURIER_ASSIGNED"), ("OUT_FOR_DELIVERY", "DELIVERED")}
CANCELLABLE = {"CREATED", "CONFIRMED", "COURIER_ASSIGNED"}  # before the parcel left the shop


def allowed(before: str, after: str) -> bool:
    if before in FINAL or after == "CREATED":
        return False
    if after == "FAILED":
        return True
    if after == "CANCELLED":
        return before in CANCELLABLE
    if (before, after) in ALSO_ALLOWED:
        return True
    return MAIN_LINE.index(after) == MAIN_LINE.index(before) + 1


def ev(kind: str, ts: int = T0, **fields: Any) -> typed.OrderEvent:
    e: typed.OrderEvent = {
        "order_id": "o-1", "event_id": f"e-{next(_ids)}", "source": "shop-1", "type": kind, "ts": ts,
        "customer_id": None, "pickup_lat": None, "pickup_lng": None, "dropoff_lat": None, "dropoff_lng": None,
        "courier_id": None, "dispatch": False, "lat": None, "lng": None, "reason": None,
    }
    e.update(fields)  # type: ignore[typeddict-item]
    return e


def created(**fields: Any) -> typed.OrderEvent:
    where = {"customer_id": "c-1", "pickup_lat": PICKUP[0], "pickup_lng": PICKUP[1], "dropoff_lat": DROPOFF[0],
             "dropoff_lng": DROPOFF[1]}
    return ev("CREATED", **{**where, **fields})


def run(*events: typed.OrderEvent, prev: typed.Order | None = None) -> typed.Order:
    order = prev
    for e in events:
        step = apply_order_event(order, e, POLICY, T0 + 1)
        assert step.refusal is None, step.refusal
        order = step.order or order
    assert order is not None
    return order


def at(status: str, **fields: Any) -> typed.Order:
    """An order that has come to `status` along the main line."""
    order = run(created(**fields))
    path = MAIN_LINE[1:MAIN_LINE.index(status) + 1] if status in MAIN_LINE else ["CONFIRMED", status]
    for i, s in enumerate(path):
        order = run(ev(s, T0 + 10 * (i + 1), courier_id="d-1" if s == "COURIER_ASSIGNED" else None), prev=order)
    return order


@pytest.mark.parametrize("before,after", [(b, a) for b in ORDER_STATUSES for a in ORDER_STATUSES])
def test_every_transition_is_allowed_exactly_when_the_life_of_an_order_says(before: str, after: str) -> None:
    order = at(before)
    step = apply_order_event(order, ev(after, T0 + 1000, courier_id="d-2"), POLICY, T0 + 2000)
    assert (after in TRANSITIONS[before]) == allowed(before, after)
    if allowed(before, after):
        assert step.refusal is None and step.order is not None and step.order["status"] == after
        assert step.order["version"] == order["version"] + 1
        assert [p["seq"] for p in step.pushes] == [order["push_seq"] + 1]
    else:
        assert step.refusal is not None and step.order is None and not step.pushes


def test_created_pushes_the_whole_view_as_seq_1() -> None:
    step = apply_order_event(None, created(), POLICY, T0 + 5)
    assert step.order is not None and step.order["status"] == "CREATED" and step.order["version"] == 1
    (push,) = step.pushes
    assert (push["channel"], push["seq"], push["type"]) == ("order:o-1", 1, "order.status")
    assert json.loads(push["data"]) == order_view(step.order)


@pytest.mark.parametrize("missing", ["customer_id", "pickup_lat", "dropoff_lng"])
def test_created_without_what_an_order_needs_is_refused(missing: str) -> None:
    assert apply_order_event(None, created(**{missing: None}), POLICY, T0).refusal == f"CREATED needs {missing}"


def test_an_event_for_an_order_never_created_is_refused() -> None:
    assert apply_order_event(None, ev("CONFIRMED"), POLICY, T0).refusal == "CONFIRMED for an order never created"


def test_a_duplicate_event_id_changes_nothing() -> None:
    order = run(created())
    confirmed = ev("CONFIRMED", T0 + 5)
    order = run(confirmed, prev=order)
    again = apply_order_event(order, confirmed, POLICY, T0 + 9)
    assert (again.outcome, again.order, again.pushes) == ("duplicate", None, [])


def test_a_late_event_joins_the_timeline_in_time_order_and_the_status_stays() -> None:
    order = at("OUT_FOR_DELIVERY")
    late = apply_order_event(order, ev("PICKED_UP", T0 + 15, event_id="scanner-7"), POLICY, T0 + 99)
    assert late.outcome == "late" and late.order is not None
    assert late.order["status"] == "OUT_FOR_DELIVERY"
    steps = [(s["status"], s["late"]) for s in late.order["timeline"]]
    assert steps[1:4] == [("CONFIRMED", False), ("PICKED_UP", True), ("COURIER_ASSIGNED", False)]  # by source time
    assert [s["ts"] for s in late.order["timeline"]] == sorted(s["ts"] for s in late.order["timeline"])


def test_an_older_status_stamped_after_the_current_one_is_refused_not_late() -> None:
    order = at("OUT_FOR_DELIVERY")
    step = apply_order_event(order, ev("PICKED_UP", T0 + 10_000), POLICY, T0 + 10_001)
    assert step.refusal == "illegal transition OUT_FOR_DELIVERY -> PICKED_UP"


def test_courier_assigned_needs_the_courier_and_asks_its_desk_to_carry_the_order() -> None:
    order = at("CONFIRMED")
    assert apply_order_event(order, ev("COURIER_ASSIGNED"), POLICY, T0).refusal == "COURIER_ASSIGNED needs courier_id"
    step = apply_order_event(order, ev("COURIER_ASSIGNED", courier_id="d-7"), POLICY, T0)
    assert [(c["driver_id"], c["op"], c["ride_id"]) for c in step.couriers] == [("d-7", "CARRY", "o-1")]
    assert step.order is not None
    reassigned = apply_order_event(step.order, ev("COURIER_ASSIGNED", courier_id="d-8"), POLICY, T0)
    assert [(c["driver_id"], c["op"]) for c in reassigned.couriers] == [("d-7", "DROP"), ("d-8", "CARRY")]


@pytest.mark.parametrize("final", sorted(FINAL))
def test_a_final_status_drops_the_order_from_its_courier(final: str) -> None:
    order = at("ARRIVING") if final == "DELIVERED" else at("COURIER_ASSIGNED")
    step = apply_order_event(order, ev(final, T0 + 500), POLICY, T0 + 501)
    assert [(c["driver_id"], c["op"]) for c in step.couriers] == [("d-1", "DROP")]


def moved(lat: float, ts: int, courier: str = "d-1") -> typed.OrderEvent:
    return ev("COURIER_MOVED", ts, courier_id=courier, lat=lat, lng=DROPOFF[1], source="livetrack")


def test_the_couriers_moves_update_position_and_eta_and_push_as_locations() -> None:
    order = at("PICKED_UP")
    step = apply_order_event(order, moved(PICKUP[0], T0 + 100), POLICY, T0 + 101)
    assert step.outcome == "moved" and step.order is not None
    assert (step.order["courier_lat"], step.order["courier_ts"]) == (PICKUP[0], T0 + 100)
    assert step.order["eta_s"] == pytest.approx(1012 * 1.3 / 8.0, rel=0.01)
    assert [p["type"] for p in step.pushes] == ["order.location"]
    assert json.loads(step.pushes[0]["data"])["courier"]["lat"] == PICKUP[0]


@pytest.mark.parametrize("why", ["stale", "other courier", "finished"])
def test_moves_that_are_not_news_change_nothing(why: str) -> None:
    order = run(moved(PICKUP[0], T0 + 100), prev=at("PICKED_UP"))
    if why == "finished":
        order = at("CANCELLED")
    e = moved(PICKUP[0] + 0.001, T0 + 50 if why == "stale" else T0 + 200, "d-9" if why == "other courier" else "d-1")
    step = apply_order_event(order, e, POLICY, T0 + 300)
    assert (step.outcome, step.order, step.pushes) == ("stale", None, [])


def test_the_pipeline_says_arriving_when_the_courier_out_for_delivery_is_close() -> None:
    order = at("OUT_FOR_DELIVERY")
    far = apply_order_event(order, moved(PICKUP[0], T0 + 100), POLICY, T0 + 101)
    assert far.order is not None and far.order["status"] == "OUT_FOR_DELIVERY"
    near = apply_order_event(far.order, moved(DROPOFF[0] - 0.001, T0 + 200), POLICY, T0 + 201)  # ~110 m
    assert near.order is not None and near.order["status"] == "ARRIVING"
    assert near.order["timeline"][-1]["source"] == "livetrack"
    assert [p["type"] for p in near.pushes] == ["order.status"]
    closer = apply_order_event(near.order, moved(DROPOFF[0], T0 + 300), POLICY, T0 + 301)
    assert closer.order is not None and closer.order["status"] == "ARRIVING"  # once
    assert [s["status"] for s in closer.order["timeline"]].count("ARRIVING") == 1


def test_a_picked_up_order_is_not_yet_arriving_however_close() -> None:
    step = apply_order_event(at("PICKED_UP"), moved(DROPOFF[0], T0 + 100), POLICY, T0 + 101)
    assert step.order is not None and step.order["status"] == "PICKED_UP"


def test_an_order_that_asks_for_dispatch_gets_a_delivery_trip_that_follows_it() -> None:
    order = run(created(dispatch=True))
    step = apply_order_event(order, ev("CONFIRMED", T0 + 1), POLICY, T0 + 2)
    (request,) = step.trips
    assert (request["ride_id"], request["command"], request["order_id"]) == (trip_id_of("o-1"), "REQUEST", "o-1")
    assert (request["pickup_lat"], request["dest_lat"], request["rider_id"]) == (PICKUP[0], DROPOFF[0], "c-1")
    assert step.order is not None
    order = run(ev("COURIER_ASSIGNED", T0 + 3, courier_id="d-1", source="livetrack"), prev=step.order)
    commands = []
    for status in ("PICKED_UP", "OUT_FOR_DELIVERY", "DELIVERED"):
        s = apply_order_event(order, ev(status, T0 + 10), POLICY, T0 + 11)
        assert s.order is not None
        order = s.order
        commands += [t["command"] for t in s.trips]
    assert commands == ["START", "COMPLETE"]


def test_an_order_without_dispatch_has_no_trip() -> None:
    assert not apply_order_event(run(created()), ev("CONFIRMED"), POLICY, T0).trips


def test_trip_ids_are_ids_whatever_the_order_id() -> None:
    assert len(trip_id_of("o" * 64)) <= 64 and trip_id_of("a") == trip_id_of("a") != trip_id_of("b")
