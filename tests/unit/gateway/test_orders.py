"""gateway.orders: parsing the systems' requests, the view of `orders`, the legacy polling shape."""
from __future__ import annotations

from typing import Any

import pytest

from agents.estimates import constant_speed
from agents.order_flow import OrderPolicy, apply_order_event, order_view
from gateway.errors import InvalidInput
from gateway.orders import OrderView, etag_of, legacy_shape, parse_order, parse_order_event
from schemas import typed

NOW = 1_700_000_000_000
BODY = {"customer_id": "c-1", "pickup": {"lat": 60.17, "lng": 24.94}, "dropoff": {"lat": 60.18, "lng": 24.94}}


def fields(exc: pytest.ExceptionInfo[InvalidInput]) -> dict[str, str]:
    return {p["field"]: p["reason"] for p in exc.value.problems}


def test_an_order_body_becomes_its_created_event() -> None:
    ev, courier = parse_order({**BODY, "courier_id": "d-1", "ts": NOW - 5, "dispatch": True}, "shop-1", NOW)
    assert (ev["type"], ev["source"], ev["customer_id"], ev["ts"], ev["dispatch"]) == (
        "CREATED", "shop-1", "c-1", NOW - 5, True)
    assert (ev["pickup_lat"], ev["dropoff_lat"], ev["order_id"], courier) == (60.17, 60.18, "", "d-1")


def test_every_bad_field_of_an_order_is_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_order({"customer_id": "c 1", "pickup": {"lat": "x", "lng": 200}, "dispatch": "yes", "ts": NOW * 2,
                     "event_id": "", "colour": "red"}, "shop-1", NOW)
    assert set(fields(exc)) == {"customer_id", "pickup.lat", "pickup.lng", "dropoff", "dispatch", "ts", "event_id",
                                "colour"}
    with pytest.raises(InvalidInput):
        parse_order([BODY], "shop-1", NOW)


def test_an_event_body_becomes_its_event() -> None:
    ev = parse_order_event({"status": "COURIER_ASSIGNED", "courier_id": "d-2", "event_id": "wms-9"}, "o-1", "wms", NOW)
    assert (ev["order_id"], ev["type"], ev["courier_id"], ev["event_id"], ev["ts"]) == (
        "o-1", "COURIER_ASSIGNED", "d-2", "wms-9", NOW)


@pytest.mark.parametrize("body,field", [
    ({"status": "CREATED"}, "status"), ({"status": "LOST"}, "status"), ({"status": "COURIER_ASSIGNED"}, "courier_id"),
    ({"status": "FAILED", "reason": "x" * 501}, "reason"), ({"status": "FAILED", "ts": -1}, "ts"),
    ({"status": "FAILED", "note": 1}, "note"),
])
def test_a_bad_event_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_order_event(body, "o-1", "wms", NOW)
    assert field in fields(exc)


def an_order(*statuses: str) -> typed.Order:
    policy = OrderPolicy(arriving_m=100, arriving_eta_s=30, move_ttl_ms=1000, speed=constant_speed(8))
    ev, _ = parse_order(BODY, "shop-1", NOW)
    ev["order_id"], ev["event_id"] = "o-1", "e-0"
    step = apply_order_event(None, ev, policy, NOW)
    assert step.order is not None
    order = step.order
    for i, status in enumerate(statuses, 1):
        e = parse_order_event({"status": status, "courier_id": "d-1", "event_id": f"e-{i}"}, "o-1", "shop-1", NOW + i)
        step = apply_order_event(order, e, policy, NOW + i)
        assert step.order is not None, step.refusal
        order = step.order
    return order


async def test_the_view_keeps_the_newest_version_and_knows_what_became_of_an_event() -> None:
    view = OrderView()
    newer, older = an_order("CONFIRMED"), an_order()
    await view.apply([newer, older])
    assert view.get("o-1") == newer and view.customer_of("o-1") == "c-1" and view.customer_of("o-2") is None
    assert view.outcome("o-1", "e-1") == ("applied", None) and view.outcome("o-1", "e-9") is None
    assert await view.wait_for("o-1", "e-9", 0.05) is None
    state = view.state_of("order:o-1")
    assert state is not None and state["seq"] == newer["push_seq"] and state["data"] == order_view(newer)
    assert view.state_of("ride:o-1") is None and view.state_of("order:o-2") is None


def test_the_legacy_shape_is_the_old_row_and_the_etag_its_version() -> None:
    order = an_order("CONFIRMED", "COURIER_ASSIGNED")
    old = legacy_shape(order_view(order))
    assert (old["id"], old["status"], old["courier_id"], old["customer_id"]) == (
        "o-1", "COURIER_ASSIGNED", "d-1", "c-1")
    assert old["updated_at"].endswith("Z") and old["courier_position"] is None
    assert etag_of(order) == '"o-1.3"' != etag_of(an_order("CONFIRMED"))


async def test_the_view_forgets_finished_orders_once_old() -> None:
    view = OrderView(keep_final_ms=1000)
    done, open_ = an_order("CANCELLED"), {**an_order("CONFIRMED"), "order_id": "o-2"}
    await view.apply([done, open_])
    assert view.sweep(done["updated_ts"] + 500) == 0
    assert view.sweep(done["updated_ts"] + 5000) == 1
    assert view.get("o-1") is None and view.get("o-2") is not None
