"""agents.drivers.apply_ping: previous state + ping -> verdict, new state, push, memberships."""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from typing import Any

import h3
import pytest

from agents.pings import ACCEPTED, DUPLICATE, JUMP, STALE, DriverPolicy, PingResult, apply_ping
from agents.reservations import placeholder
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.records import CellMembership, DriverState, PushMessage

POLICY = DriverPolicy()
T0 = 1_732_170_000_000
M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180
# Start at the centre of an H3 cell: moves of a few tens of metres stay inside it (res 9 edge ~ 174 m).
HOME = h3.cell_to_latlng(h3.latlng_to_cell(37.7749, -122.4194, POLICY.h3_resolution))


def _moved(lat: float, lng: float, north_m: float = 0.0, east_m: float = 0.0) -> tuple[float, float]:
    """A point `north_m`/`east_m` metres from (lat, lng) (flat-earth: fine over a few km)."""
    return (lat + north_m / M_PER_DEG_LAT,
            lng + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat))))


def _ping(seq: int, lat: float, lng: float, fix_ts: int, driver_id: str = "d-1", **extra: Any) -> dict[str, Any]:
    """A decoded LocationEvent; the gateway received it 40 ms after the fix."""
    return {"driver_id": driver_id, "seq": seq, "lat": lat, "lng": lng, "fix_ts": fix_ts,
            "received_ts": fix_ts + 40, "accuracy": None, "speed": None, "bearing": None, **extra}


def _apply(prev: dict[str, Any] | None, ev: dict[str, Any], policy: DriverPolicy = POLICY,
           now_ms: int | None = None) -> PingResult:
    """apply_ping, checking that everything it returns encodes with its Avro schema."""
    result = apply_ping(prev, ev, policy, ev["fix_ts"] + 100 if now_ms is None else now_ms)
    if result.state is not None:
        codec = codec_for(DriverState)
        assert codec.loads(codec.dumps(result.state)) == result.state
    if result.push is not None:
        codec = codec_for(PushMessage)
        assert codec.loads(codec.dumps(result.push)) == result.push
    for m in result.memberships:
        codec = codec_for(CellMembership)
        assert codec.loads(codec.dumps(m)) == m
    return result


def _cell(lat: float, lng: float, policy: DriverPolicy = POLICY) -> str:
    return h3.latlng_to_cell(lat, lng, policy.h3_resolution)


def _first(lat: float = HOME[0], lng: float = HOME[1], fix_ts: int = T0) -> dict[str, Any]:
    """The state after the driver's first ping (seq 1)."""
    state = _apply(None, _ping(1, lat, lng, fix_ts)).state
    assert state is not None
    return state


# --- the first ping --------------------------------------------------------------------------------


def test_first_ping_is_accepted_with_a_state() -> None:
    ev = _ping(1, *HOME, T0, speed=8.5, bearing=270.0, accuracy=4.0)
    result = _apply(None, ev)
    assert result.verdict == ACCEPTED
    assert result.state == {
        "driver_id": "d-1", "seq": 1, "lat": HOME[0], "lng": HOME[1], "fix_ts": T0, "received_ts": T0 + 40,
        "cell": _cell(*HOME), "status": "AVAILABLE", "push_seq": 1, "pushed_lat": HOME[0],
        "pushed_lng": HOME[1], "pushed_ts": T0, "membership_ts": T0, "speed": 8.5, "bearing": 270.0,
        "accuracy": 4.0, "ride_id": None, "offer_attempt": 0, "reserved_until": 0, "offer_seq": 0, "orders": [],
    }


def test_first_ping_joins_its_cell() -> None:
    result = _apply(None, _ping(1, 40.7128, -74.0060, T0))
    assert result.memberships == ({"cell": _cell(40.7128, -74.0060), "driver_id": "d-1", "op": "JOIN",
                                   "status": "AVAILABLE", "ts": T0},)


def test_first_ping_is_pushed_as_seq_1() -> None:
    result = _apply(None, _ping(1, *HOME, T0, speed=3.0), now_ms=T0 + 900)
    push = result.push
    assert push is not None
    assert {k: v for k, v in push.items() if k != "data"} == {
        "channel": "driver:d-1", "seq": 1, "type": "driver.location", "priority": push["priority"],
        "ttl_ms": POLICY.push_ttl_ms, "sent_ts": T0 + 900, "event_ts": T0 + 40,
    }
    assert 0 <= push["priority"] <= 9
    data = json.loads(push["data"])
    assert (data["lat"], data["lng"], data["status"]) == (HOME[0], HOME[1], "AVAILABLE")
    assert (data["driver_id"], data["seq"], data["ts"], data["speed"], data["cell"]) == (
        "d-1", 1, T0, 3.0, _cell(*HOME))


def test_channel_is_per_driver() -> None:
    result = _apply(None, _ping(1, *HOME, T0, driver_id="abc_9"))
    assert result.push is not None and result.push["channel"] == "driver:abc_9"
    assert result.memberships[0]["driver_id"] == "abc_9"


# --- duplicates, stale pings, jumps ----------------------------------------------------------------


def test_duplicate_of_the_pushed_ping_re_emits_the_same_push_and_join() -> None:
    ev = _ping(1, *HOME, T0)
    first = _apply(None, ev, now_ms=T0 + 500)
    again = _apply(first.state, ev, now_ms=T0 + 500)
    assert again.verdict == DUPLICATE
    assert again.state is None
    assert again.push == first.push
    assert again.memberships == first.memberships


def test_re_emitted_push_differs_only_in_sent_ts() -> None:
    ev = _ping(1, *HOME, T0)
    first = _apply(None, ev, now_ms=T0 + 500)
    later = _apply(first.state, ev, now_ms=T0 + 60_000)
    assert first.push is not None and later.push is not None
    assert later.push["sent_ts"] == T0 + 60_000
    assert {**later.push, "sent_ts": 0} == {**first.push, "sent_ts": 0}


def test_duplicate_of_an_unpushed_ping_emits_nothing() -> None:
    state = _first()
    ev = _ping(2, *_moved(*HOME, north_m=2), T0 + 1000)
    quiet = _apply(state, ev)
    assert quiet.verdict == ACCEPTED and quiet.push is None and quiet.memberships == ()
    again = _apply(quiet.state, ev)
    assert (again.verdict, again.state, again.push, again.memberships) == (DUPLICATE, None, None, ())


def test_lower_seq_is_stale() -> None:
    state = _apply(_first(), _ping(5, *_moved(*HOME, east_m=50), T0 + 5000)).state
    result = _apply(state, _ping(4, *_moved(*HOME, east_m=40), T0 + 4000))
    assert (result.verdict, result.state, result.push, result.memberships) == (STALE, None, None, ())


def test_impossible_jump_is_refused() -> None:
    far = _moved(*HOME, north_m=50_000)  # 50 km in 1 s
    result = _apply(_first(), _ping(2, *far, T0 + 1000))
    assert (result.verdict, result.state, result.push, result.memberships) == (JUMP, None, None, ())


def test_the_same_distance_at_a_possible_speed_is_accepted() -> None:
    far = _moved(*HOME, north_m=50_000)  # 50 km in 15 min = 56 m/s < 83 m/s
    assert _apply(_first(), _ping(2, *far, T0 + 900_000)).verdict == ACCEPTED


def test_gps_slack_is_never_a_jump() -> None:
    near = _moved(*HOME, east_m=POLICY.jump_slack_m - 10)  # with no time between the fixes
    assert _apply(_first(), _ping(2, *near, T0)).verdict == ACCEPTED
    beyond = _moved(*HOME, east_m=POLICY.jump_slack_m + 10)
    assert _apply(_first(), _ping(2, *beyond, T0)).verdict == JUMP


def test_jump_is_judged_against_the_last_accepted_state() -> None:
    state = _first()
    assert _apply(state, _ping(2, *_moved(*HOME, north_m=50_000), T0 + 1000)).verdict == JUMP
    # The refused fix left no state: the next plausible fix is compared with seq 1, and accepted.
    assert _apply(state, _ping(3, *_moved(*HOME, north_m=30), T0 + 2000)).verdict == ACCEPTED


# --- when to push ----------------------------------------------------------------------------------


def test_small_move_soon_after_a_push_is_not_pushed() -> None:
    state = _first()
    lat, lng = _moved(*HOME, north_m=POLICY.push_min_distance_m / 2)
    result = _apply(state, _ping(2, lat, lng, T0 + POLICY.push_min_interval_ms - 1))
    assert result.verdict == ACCEPTED and result.push is None
    new = result.state
    assert new is not None
    assert (new["seq"], new["lat"], new["lng"]) == (2, lat, lng)  # the state moves...
    assert (new["push_seq"], new["pushed_lat"], new["pushed_lng"], new["pushed_ts"]) == (
        1, HOME[0], HOME[1], T0)  # ...what subscribers saw does not


def test_small_moves_add_up_to_a_push() -> None:
    step = POLICY.push_min_distance_m * 0.6
    state = _first()
    one = _apply(state, _ping(2, *_moved(*HOME, north_m=step), T0 + 1000))
    assert one.push is None
    two = _apply(one.state, _ping(3, *_moved(*HOME, north_m=2 * step), T0 + 2000))
    assert two.push is not None and two.push["seq"] == 2
    assert two.state is not None and two.state["pushed_ts"] == T0 + 2000


def test_a_move_of_push_min_distance_is_pushed_at_once() -> None:
    lat, lng = _moved(*HOME, east_m=POLICY.push_min_distance_m + 1)
    result = _apply(_first(), _ping(2, lat, lng, T0 + 100))
    assert result.push is not None and result.push["seq"] == 2
    assert result.state is not None
    assert (result.state["pushed_lat"], result.state["pushed_lng"]) == (lat, lng)


def test_push_after_min_interval_even_without_moving() -> None:
    state = _first()
    still = _apply(state, _ping(2, *HOME, T0 + POLICY.push_min_interval_ms - 1))
    assert still.push is None
    due = _apply(still.state, _ping(3, *HOME, T0 + POLICY.push_min_interval_ms))
    assert due.push is not None and due.push["seq"] == 2
    assert due.state is not None and due.state["pushed_ts"] == T0 + POLICY.push_min_interval_ms


def test_pushed_seqs_are_contiguous() -> None:
    rng = random.Random(7)
    state: dict[str, Any] | None = None
    lat, lng = HOME
    pushed: list[int] = []
    skipped = 0
    for seq in range(1, 121):
        lat, lng = _moved(lat, lng, north_m=rng.uniform(-8, 8), east_m=rng.uniform(-8, 8))
        result = _apply(state, _ping(seq, lat, lng, T0 + seq * 700))
        assert result.verdict == ACCEPTED and result.state is not None
        if result.push is None:
            skipped += 1
        else:
            assert result.push["seq"] == result.state["push_seq"]
            assert json.loads(result.push["data"])["seq"] == seq
            pushed.append(result.push["seq"])
        state = result.state
    assert pushed == list(range(1, len(pushed) + 1))
    assert state is not None and state["push_seq"] == len(pushed)
    assert skipped > 10 and len(pushed) > 10  # both branches were exercised


# --- cell membership -------------------------------------------------------------------------------


def test_cell_change_leaves_the_old_cell_and_joins_the_new() -> None:
    state = _first()
    far = _moved(*HOME, east_m=1000)  # 1 km in 60 s: plausible, and surely another res-9 cell
    assert _cell(*far) != state["cell"]
    result = _apply(state, _ping(2, *far, T0 + 60_000))
    assert result.memberships == (
        {"cell": state["cell"], "driver_id": "d-1", "op": "LEAVE", "status": "AVAILABLE", "ts": T0 + 60_000},
        {"cell": _cell(*far), "driver_id": "d-1", "op": "JOIN", "status": "AVAILABLE", "ts": T0 + 60_000},
    )
    assert result.state is not None
    assert (result.state["cell"], result.state["membership_ts"]) == (_cell(*far), T0 + 60_000)


def test_same_cell_is_refreshed_after_membership_refresh_ms() -> None:
    state = _first()
    quiet = _apply(state, _ping(2, *HOME, T0 + POLICY.membership_refresh_ms - 1))
    assert quiet.memberships == ()
    assert quiet.state is not None and quiet.state["membership_ts"] == T0
    due = _apply(quiet.state, _ping(3, *HOME, T0 + POLICY.membership_refresh_ms))
    assert due.memberships == ({"cell": state["cell"], "driver_id": "d-1", "op": "REFRESH",
                                "status": "AVAILABLE", "ts": T0 + POLICY.membership_refresh_ms},)
    assert due.state is not None and due.state["membership_ts"] == T0 + POLICY.membership_refresh_ms
    after = _apply(due.state, _ping(4, *HOME, T0 + POLICY.membership_refresh_ms + 1000))
    assert after.memberships == ()


def test_status_is_kept_from_the_previous_state() -> None:
    state = {**_first(), "status": "ON_TRIP"}
    far = _moved(*HOME, east_m=1000)
    result = _apply(state, _ping(2, *far, T0 + 60_000))
    assert result.state is not None and result.state["status"] == "ON_TRIP"
    assert {m["status"] for m in result.memberships} == {"ON_TRIP"}
    assert result.push is not None and json.loads(result.push["data"])["status"] == "ON_TRIP"


# --- policy ----------------------------------------------------------------------------------------


def test_policy_from_settings_takes_the_settings_thresholds() -> None:
    settings = Settings(h3_resolution=7, max_speed_mps=20.0, push_min_distance_m=25.0,
                        push_min_interval_ms=1234, membership_refresh_ms=4321)
    policy = DriverPolicy.from_settings(settings)
    assert (policy.h3_resolution, policy.max_speed_mps, policy.push_min_distance_m,
            policy.push_min_interval_ms, policy.membership_refresh_ms) == (7, 20.0, 25.0, 1234, 4321)


def test_policy_thresholds_drive_the_decisions() -> None:
    policy = replace(POLICY, h3_resolution=6, max_speed_mps=10.0, push_min_distance_m=100.0)
    first = _apply(None, _ping(1, *HOME, T0), policy)
    assert first.state is not None and first.state["cell"] == h3.latlng_to_cell(*HOME, 6)
    # 50 m: under this policy's push distance; 1 km in 60 s: over its 10 m/s (+ slack).
    assert _apply(first.state, _ping(2, *_moved(*HOME, north_m=50), T0 + 1000), policy).push is None
    assert _apply(first.state, _ping(2, *_moved(*HOME, north_m=1000), T0 + 60_000), policy).verdict == JUMP
    assert _apply(first.state, _ping(2, *_moved(*HOME, north_m=1000), T0 + 60_000)).verdict == ACCEPTED


@pytest.mark.parametrize("seq", [1, 2, 10])
def test_previous_state_is_not_mutated(seq: int) -> None:
    state = _first()
    before = dict(state)
    _apply(state, _ping(seq, *_moved(*HOME, east_m=1000), T0 + 60_000))
    assert state == before


def test_a_ping_keeps_the_offer_and_tells_the_assigned_ride_of_a_move() -> None:
    first = {**_first(), "ride_id": "r-1", "offer_attempt": 2, "reserved_until": 0, "offer_seq": 1}
    moved = _apply(first, _ping(2, HOME[0] + 0.001, HOME[1], T0 + 1000))
    assert moved.state is not None
    assert (moved.state["ride_id"], moved.state["offer_attempt"], moved.state["offer_seq"]) == ("r-1", 2, 1)
    assert moved.ride_move is not None and moved.ride_move["command"] == "DRIVER_MOVED"
    assert (moved.ride_move["ride_id"], moved.ride_move["lat"]) == ("r-1", HOME[0] + 0.001)
    reserved = {**first, "reserved_until": T0 + 5000}  # an open offer is not a trip: no move to tell
    assert _apply(reserved, _ping(2, HOME[0] + 0.001, HOME[1], T0 + 1000)).ride_move is None


def test_a_couriers_first_ping_after_a_command_named_it_is_a_first_ping() -> None:
    named = {**placeholder("d-1"), "orders": ["o-1"], "push_seq": 1}
    result = _apply(named, _ping(0, *HOME, T0))
    assert result.verdict == ACCEPTED and result.state is not None
    assert [m["op"] for m in result.memberships] == ["JOIN"]
    assert [(m["order_id"], m["type"], m["courier_id"], m["lat"]) for m in result.order_moves] == [
        ("o-1", "COURIER_MOVED", "d-1", HOME[0])]


def test_a_courier_carrying_orders_tells_each_of_its_significant_moves_only() -> None:
    first = _apply(None, _ping(1, *HOME, T0))
    assert first.state is not None
    carrying = {**first.state, "orders": ["o-1", "o-2"]}
    small = _apply(carrying, _ping(2, *_moved(*HOME, north_m=3), T0 + 1000))
    assert small.order_moves == ()
    big = _apply(carrying, _ping(3, *_moved(*HOME, north_m=80), T0 + 2000))
    assert [m["order_id"] for m in big.order_moves] == ["o-1", "o-2"]
    assert {m["event_id"] for m in big.order_moves} == {"d-1:3"}  # the ping's: a replay is a duplicate
