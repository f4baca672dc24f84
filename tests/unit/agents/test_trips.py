"""agents.rides: the ride state machine and every command's decision, without Kafka."""
from __future__ import annotations

import json
from typing import Any, Collection

import h3
import pytest

from agents.estimates import Candidate, constant_speed
from agents.trips import (
    FINAL, TRANSITIONS, DispatchPolicy, IllegalTransition, Step, apply_command, held_until, may_cancel, next_state,
)
from agents.errors import Rejected
from infra.settings import Settings
from schemas.records import RIDE_EVENTS, RIDE_STATES

T0 = 1_732_170_000_000
PICKUP = (37.7749, -122.4194)
POLICY = DispatchPolicy(k_min=1, k_max=3, min_candidates=1, offer_ttl_ms=10_000, offer_grace_ms=500,
                        reserve_timeout_ms=3_000, retry_ms=1_000, max_wait_ms=30_000, eta_push_threshold_s=30,
                        push_min_distance_m=50, speed=constant_speed(10.0))


def near(driver: str, metres: float) -> Candidate:
    return Candidate(driver, PICKUP[0] + metres / 111_195, PICKUP[1], T0)


class Area:
    """A fake candidate query: drivers by ring; records what was asked."""

    def __init__(self, by_k: dict[int, list[Candidate]]) -> None:
        self.by_k = by_k
        self.asked: list[int] = []

    def __call__(self, cell: str, k: int, exclude: Collection[str]) -> list[Candidate]:
        self.asked.append(k)
        return [c for ring in range(k + 1) for c in self.by_k.get(ring, []) if c.driver_id not in exclude]


def cmd(command: str, **kw: Any) -> dict[str, Any]:
    base = {"ride_id": "r-1", "command": command, "ts": T0, "actor": "system", "actor_id": "offers",
            "driver_id": None, "attempt": 0, "lat": None, "lng": None, "expires_at": 0, "reason": None,
            "order_id": None}
    return {**base, **kw}


def request(**kw: Any) -> dict[str, Any]:
    return cmd("REQUEST", actor="rider", actor_id="u-1", rider_id="u-1", product="standard",
               pickup_lat=PICKUP[0], pickup_lng=PICKUP[1], dest_lat=PICKUP[0] + 0.02, dest_lng=PICKUP[1], **kw)


def run(ride: dict | None, command: dict, area: Area | None = None, now: int = T0) -> Step:
    return apply_command(ride, command, POLICY, area or Area({}), now)


def requested(area: Area) -> dict:
    step = run(None, request(), area)
    assert step.ride is not None
    return step.ride


def offered(area: Area) -> dict:
    ride = requested(area)
    step = run(ride, cmd("RESERVED", driver_id=ride["offer_driver"], attempt=1, lat=PICKUP[0], lng=PICKUP[1],
                         expires_at=T0 + 10_000), area, T0 + 20)
    assert step.ride is not None
    return step.ride


def accepted(area: Area) -> dict:
    ride = offered(area)
    step = run(ride, cmd("ASSIGNED", driver_id=ride["offer_driver"], attempt=1, lat=PICKUP[0], lng=PICKUP[1]),
               area, T0 + 2000)
    assert step.ride is not None
    return step.ride


# --- state machine ---------------------------------------------------------------------------------

# A ride's life, written out independently of the code's table: state (none before the request),
# the event, the state after. Every other (state, event) must be refused.
LIFE = """
-         REQUESTED  REQUESTED
REQUESTED OFFERED    OFFERED
REQUESTED CANCELLED  CANCELLED
REQUESTED NO_DRIVERS NO_DRIVERS
OFFERED   DECLINED   REQUESTED
OFFERED   EXPIRED    REQUESTED
OFFERED   ACCEPTED   ACCEPTED
OFFERED   CANCELLED  CANCELLED
ACCEPTED  STARTED    ONGOING
ACCEPTED  CANCELLED  CANCELLED
ONGOING   COMPLETED  COMPLETED
ONGOING   CANCELLED  CANCELLED
"""
SPEC = {(None if a == "-" else a, e): b for a, e, b in (line.split() for line in LIFE.strip().splitlines())}


@pytest.mark.parametrize("state", [None, *RIDE_STATES])
@pytest.mark.parametrize("event", RIDE_EVENTS)
def test_every_state_and_event_goes_where_the_life_of_a_ride_says(state: str | None, event: str) -> None:
    if (state, event) in SPEC:
        assert next_state(state, event) == SPEC[(state, event)]
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, event)


ILLEGAL = [(s, e) for s in (None, *RIDE_STATES) for e in RIDE_EVENTS if (s, e) not in SPEC]


def test_final_states_have_no_way_out() -> None:
    assert not [key for key in TRANSITIONS if key[0] in FINAL]
    assert ("COMPLETED", "ACCEPTED") in ILLEGAL and ("OFFERED", "STARTED") in ILLEGAL


def test_who_may_cancel() -> None:
    ride = {"state": "ACCEPTED", "rider_id": "u-1", "driver_id": "d-1", "order_id": None}
    assert may_cancel(ride, "rider", "u-1") and may_cancel(ride, "driver", "d-1") and may_cancel(ride, "ops", "x")
    assert not may_cancel(ride, "rider", "u-2") and not may_cancel(ride, "driver", "d-2")
    assert not may_cancel(ride, "system", "orders") and may_cancel({**ride, "order_id": "o-1"}, "system", "orders")
    assert not may_cancel({**ride, "state": "ONGOING"}, "rider", "u-1")
    assert may_cancel({**ride, "state": "ONGOING"}, "ops", "x")
    assert not may_cancel({**ride, "state": "COMPLETED"}, "ops", "x")


# --- commands --------------------------------------------------------------------------------------

def test_a_request_is_priced_logged_and_offered_to_the_best_candidate() -> None:
    area = Area({1: [near("far", 400), near("near", 50)]})
    step = run(None, request(fare_estimate=0.01), area)
    assert step.ride is not None
    ride = step.ride
    assert [e["event"] for e in step.events] == ["REQUESTED"]
    event = step.events[0]
    assert event["version"] == 1 and event["pickup_cell"] == h3.latlng_to_cell(*PICKUP, 9)
    assert event["fare_estimate"] > 6 and event["pickup_eta_s"] == pytest.approx(50 * 1.3 / 10, abs=0.2)
    assert [(o["op"], o["driver_id"], o["attempt"], o["ttl_ms"]) for o in step.offers] == [
        ("RESERVE", "near", 1, 10_000)]
    assert (ride["offer_driver"], ride["deadline_ms"], ride["state"]) == ("near", T0 + 3_000, "REQUESTED")
    push = step.pushes[0]
    assert (push["channel"], push["seq"], push["type"]) == ("ride:r-1", 1, "ride.state")
    assert json.loads(push["data"])["state"] == "REQUESTED"


def test_a_replayed_request_changes_nothing_and_bad_ones_are_rejected() -> None:
    area = Area({1: [near("a", 10)]})
    assert run(requested(area), request(), area).ride is None
    with pytest.raises(Rejected):
        run(None, {**request(), "product": "rocket"}, area)


def test_the_ring_widens_until_there_are_candidates() -> None:
    area = Area({3: [near("far", 900)]})
    ride = requested(area)
    assert area.asked == [1, 2, 3] and ride["ring"] == 3 and ride["offer_driver"] == "far"


def test_nobody_near_means_looking_again_then_no_drivers() -> None:
    area = Area({})
    ride = requested(area)
    assert ride["state"] == "REQUESTED" and ride["offer_driver"] is None and ride["deadline_ms"] == T0 + 1_000
    step = run(ride, cmd("TIMEOUT", expires_at=T0 + 1_000), area, T0 + 1_000)
    assert step.ride is not None and step.ride["deadline_ms"] == T0 + 2_000 and not step.events
    late = run(step.ride, cmd("TIMEOUT", expires_at=T0 + 2_000), area, T0 + 30_000)
    assert [e["event"] for e in late.events] == ["NO_DRIVERS"] and late.ride["state"] == "NO_DRIVERS"


def test_reserved_makes_an_offer_and_a_stale_reservation_is_released() -> None:
    area = Area({1: [near("a", 10), near("b", 20)]})
    ride = offered(area)
    assert ride["state"] == "OFFERED" and ride["deadline_ms"] == T0 + 10_500 and ride["version"] == 2
    stale = run(ride, cmd("RESERVED", driver_id="b", attempt=7, lat=1.0, lng=1.0, expires_at=T0), area)
    assert stale.ride is None and [(o["op"], o["driver_id"], o["attempt"]) for o in stale.offers] == [
        ("RELEASE", "b", 7)]
    again = run(ride, cmd("RESERVED", driver_id="a", attempt=1, lat=1.0, lng=1.0, expires_at=T0), area)
    assert again.ride is None and not again.offers  # the same answer replayed


def test_refused_reservations_move_on_and_busy_drivers_may_be_asked_later() -> None:
    area = Area({1: [near("a", 10), near("b", 20)]})
    ride = requested(area)
    step = run(ride, cmd("REFUSED", driver_id="a", attempt=1, reason="reserved"), area)
    assert step.ride["busy"] == ["a"] and step.offers[0]["driver_id"] == "b" and step.ride["attempt"] == 2
    step = run(step.ride, cmd("REFUSED", driver_id="b", attempt=2, reason="busy"), area)
    assert step.ride["tried"] == ["b"] and step.ride["offer_driver"] is None  # waits: a may be free later
    retry = run(step.ride, cmd("TIMEOUT", expires_at=step.ride["deadline_ms"]), area, T0 + 1_000)
    assert retry.offers[0]["driver_id"] == "a"


def test_silence_expires_the_offer_releases_the_driver_and_asks_the_next() -> None:
    area = Area({1: [near("a", 10), near("b", 20)]})
    ride = offered(area)
    assert run(ride, cmd("TIMEOUT", expires_at=123), area).ride is None  # not its deadline: stale
    step = run(ride, cmd("TIMEOUT", expires_at=ride["deadline_ms"]), area, ride["deadline_ms"])
    assert [e["event"] for e in step.events] == ["EXPIRED"] and step.events[0]["driver_id"] == "a"
    assert [(o["op"], o["driver_id"]) for o in step.offers] == [("RELEASE", "a"), ("RESERVE", "b")]
    assert step.ride["tried"] == ["a"] and step.ride["state"] == "REQUESTED"


def test_decline_logs_and_asks_the_next() -> None:
    area = Area({1: [near("a", 10), near("b", 20)]})
    step = run(offered(area), cmd("DECLINED", driver_id="a", attempt=1), area)
    assert [e["event"] for e in step.events] == ["DECLINED"] and step.offers[0]["driver_id"] == "b"


def test_assignment_is_a_compare_and_set_on_the_open_offer() -> None:
    area = Area({1: [near("a", 10), near("b", 20)]})
    ride = accepted(area)
    assert (ride["state"], ride["driver_id"], ride["deadline_ms"]) == ("ACCEPTED", "a", 0)
    # A second assignment (another driver, or a stale attempt) is refused and the driver given back.
    for other in (cmd("ASSIGNED", driver_id="b", attempt=1, lat=1.0, lng=1.0),
                  cmd("ASSIGNED", driver_id="a", attempt=9, lat=1.0, lng=1.0)):
        step = run(ride, other, area)
        if other["driver_id"] == "a":
            assert step.ride is None and not step.offers  # the same driver again: a replay
        else:
            assert step.ride is None and [(o["op"], o["driver_id"]) for o in step.offers] == [("FREE", "b")]
    expired = run(offered(area), cmd("TIMEOUT", expires_at=T0 + 10_500), area, T0 + 10_500).ride
    late = run(expired, cmd("ASSIGNED", driver_id="a", attempt=1, lat=1.0, lng=1.0), area)
    assert [(o["op"], o["driver_id"]) for o in late.offers] == [("FREE", "a")]


def test_only_the_assigned_driver_starts_and_completes() -> None:
    area = Area({1: [near("a", 10)]})
    ride = accepted(area)
    assert run(ride, cmd("START", actor="driver", actor_id="b"), area).refusal
    assert run(ride, cmd("COMPLETE", actor="driver", actor_id="a"), area).refusal  # not started
    started = run(ride, cmd("START", actor="driver", actor_id="a"), area)
    assert started.ride["state"] == "ONGOING" and started.offers[0]["op"] == "START"
    done = run(started.ride, cmd("COMPLETE", actor="driver", actor_id="a"), area)
    assert done.ride["state"] == "COMPLETED" and [(o["op"], o["reason"]) for o in done.offers] == [
        ("FREE", "completed")]
    assert [e["version"] for e in done.events] == [5]


def test_cancel_releases_whoever_holds_the_ride() -> None:
    area = Area({1: [near("a", 10)]})
    assert run(offered(area), cmd("CANCEL", actor="rider", actor_id="u-2"), area).refusal
    step = run(offered(area), cmd("CANCEL", actor="rider", actor_id="u-1", reason="late"), area)
    assert step.events[0]["event"] == "CANCELLED" and step.events[0]["reason"] == "late"
    assert [(o["op"], o["driver_id"]) for o in step.offers] == [("RELEASE", "a")]
    step = run(accepted(area), cmd("CANCEL", actor="driver", actor_id="a"), area)
    assert [(o["op"], o["driver_id"]) for o in step.offers] == [("FREE", "a")]


def test_moves_of_the_assigned_driver_push_position_and_eta_past_thresholds() -> None:
    area = Area({1: [near("a", 1000)]})
    ride = accepted(area)
    small = run(ride, cmd("DRIVER_MOVED", driver_id="a", lat=PICKUP[0] + 10 / 111_195, lng=PICKUP[1]), area)
    assert small.ride is None and not small.pushes  # 10 m, same ETA: nothing for the rider
    far = run(ride, cmd("DRIVER_MOVED", driver_id="a", lat=PICKUP[0] + 900 / 111_195, lng=PICKUP[1]), area)
    data = json.loads(far.pushes[0]["data"])
    assert far.pushes[0]["type"] == "ride.driver" and data["eta_to"] == "pickup"
    assert data["eta_s"] == pytest.approx(900 * 1.3 / 10, abs=0.5)  # changed by > 30 s: a new ETA
    assert run(ride, cmd("DRIVER_MOVED", driver_id="zz", lat=1.0, lng=1.0), area).ride is None


def test_driver_hints_from_the_offers_agents_answers() -> None:
    assert held_until(cmd("RESERVED", driver_id="a", expires_at=T0 + 5), T0, 100) == T0 + 5
    assert held_until(cmd("REFUSED", driver_id="a", reason="busy"), T0, 100) == T0 + 100
    assert held_until(cmd("DECLINED", driver_id="a"), T0, 100) == 0
    assert held_until(cmd("TIMEOUT"), T0, 100) is None


def test_policy_from_settings_takes_feature_lookups() -> None:
    """The worker plugs features in: surge and per-cell speed replace the defaults."""
    plain = DispatchPolicy.from_settings(Settings())
    assert plain.surge("any") == 1.0 and plain.eta_s(37.77, -122.42, 37.78, -122.42) > 0
    fed = DispatchPolicy.from_settings(Settings(), surge=lambda cell: 1.5, speed=lambda cell: 4.0)
    assert fed.surge("any") == 1.5
    assert fed.eta_s(37.77, -122.42, 37.78, -122.42) > plain.eta_s(37.77, -122.42, 37.78, -122.42)
