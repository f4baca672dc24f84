"""gateway.rides: request parsing, ride ids, and the view of the `rides` log."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.errors import InvalidInput
from gateway.rides import RideView, _answered, parse_ride_request, ride_id_for

RIDER = Principal("rider", "u-1")
BODY = {"pickup": {"lat": 37.77, "lng": -122.41}, "destination": {"lat": 37.79, "lng": -122.40}}


def test_a_request_names_pickup_destination_product_and_ignores_client_prices() -> None:
    fields = parse_ride_request({**BODY, "fare_estimate": 0.01, "pickup_eta_s": 1}, RIDER)
    assert fields == {"rider_id": "u-1", "product": "standard", "pickup_lat": 37.77, "pickup_lng": -122.41,
                      "dest_lat": 37.79, "dest_lng": -122.40}


def test_every_bad_field_is_named() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_ride_request({"pickup": {"lat": 91, "lng": "x"}, "product": "rocket", "tip": 3}, RIDER)
    fields = {p["field"] for p in err.value.problems}
    assert fields == {"pickup.lat", "pickup.lng", "destination", "product", "tip"}
    with pytest.raises(InvalidInput):
        parse_ride_request({**BODY, "rider_id": "someone-else"}, RIDER)
    with pytest.raises(InvalidInput):
        parse_ride_request(BODY, Principal("ops", "desk"))  # ops must name the rider
    assert parse_ride_request({**BODY, "rider_id": "u-9"}, Principal("ops", "desk"))["rider_id"] == "u-9"


def test_ride_ids_are_new_unless_the_idempotency_key_repeats() -> None:
    assert ride_id_for("u-1", None) != ride_id_for("u-1", None)
    assert ride_id_for("u-1", "k") == ride_id_for("u-1", "k") != ride_id_for("u-2", "k")


def event(version: int, name: str, state: str, driver: str | None = None) -> dict[str, Any]:
    return {"ride_id": "r-1", "version": version, "event": name, "state": state, "ts": version, "actor": "system",
            "rider_id": "u-1", "product": "standard", "pickup_lat": 1.0, "pickup_lng": 2.0, "dest_lat": 3.0,
            "dest_lng": 4.0, "pickup_cell": "c", "driver_id": driver, "fare_estimate": 9.0, "pickup_eta_s": 60.0,
            "reason": None}


async def test_the_view_keeps_the_latest_version_and_wakes_waiters() -> None:
    view = RideView()
    waiting = asyncio.ensure_future(view.wait_for("r-1", lambda r: r["state"] == "ACCEPTED", 2.0))
    await view.apply([event(1, "REQUESTED", "REQUESTED"), event(2, "OFFERED", "OFFERED", "d-1")])
    assert view.rider_of("r-1") == "u-1" and view.get("r-1")["offered_to"] == "d-1"
    await view.apply([event(2, "OFFERED", "OFFERED", "d-9"), event(3, "ACCEPTED", "ACCEPTED", "d-1")])
    ride = await waiting
    assert ride["driver_id"] == "d-1" and [e["version"] for e in ride["events"]] == [1, 2, 3]
    assert ride["events"][1]["driver_id"] == "d-1"  # the replayed v2 was ignored
    assert await view.wait_for("r-2", lambda r: True, 0.05) is None and view.rider_of("r-2") is None


def test_a_drivers_answer_is_judged_by_events_about_that_driver() -> None:
    ride = {"events": [event(1, "REQUESTED", "REQUESTED"), event(2, "OFFERED", "OFFERED", "d-0"),
                       event(3, "DECLINED", "REQUESTED", "d-0")]}
    accepted = _answered("d-1", "ACCEPTED")
    assert accepted(ride) is None  # d-1's offer is not in the log yet: undecided, not refused
    ride["events"].append(event(4, "OFFERED", "OFFERED", "d-1"))
    assert accepted(ride) is None
    assert accepted({"events": [*ride["events"], event(5, "ACCEPTED", "ACCEPTED", "d-1")]}) is True
    assert accepted({"events": [*ride["events"], event(5, "EXPIRED", "REQUESTED", "d-1")]}) is False
    assert accepted({"events": [*ride["events"], event(5, "CANCELLED", "CANCELLED")]}) is False
