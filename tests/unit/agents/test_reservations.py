"""agents.reservations: a driver's reservation check-and-set, assignment and release, without Kafka."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.reservations import RESERVATIONS, OfferPolicy, apply_driver_op, apply_offer, as_markdown, phase_of

T0 = 1_732_170_000_000
POLICY = OfferPolicy(driver_max_age_ms=30_000)


def driver(**kw: Any) -> dict[str, Any]:
    state = {"driver_id": "d-1", "seq": 9, "lat": 37.77, "lng": -122.41, "fix_ts": T0 - 500, "received_ts": T0 - 400,
             "cell": "8928308280fffff", "status": "AVAILABLE", "push_seq": 4, "pushed_lat": 37.77,
             "pushed_lng": -122.41, "pushed_ts": T0, "membership_ts": T0, "speed": None, "bearing": None,
             "accuracy": None, "ride_id": None, "offer_attempt": 0, "reserved_until": 0, "offer_seq": 0,
             "orders": []}
    return {**state, **kw}


def offer(op: str, ride: str = "r-1", attempt: int = 1, **kw: Any) -> dict[str, Any]:
    return {"driver_id": "d-1", "op": op, "ride_id": ride, "ts": T0, "actor": "system", "attempt": attempt,
            "ttl_ms": 10_000, "pickup_lat": 37.771, "pickup_lng": -122.41, "dest_lat": 37.79, "dest_lng": -122.4,
            "fare_estimate": 12.5, "reason": None, **kw}


def reserved_driver() -> dict[str, Any]:
    result = apply_offer(driver(), offer("RESERVE"), POLICY, T0)
    assert result.state is not None
    return result.state


def test_reserve_holds_the_driver_and_pushes_the_offer_on_the_drivers_own_seq() -> None:
    result = apply_offer(driver(), offer("RESERVE"), POLICY, T0)
    state = result.state
    assert state is not None
    assert (state["ride_id"], state["offer_attempt"], state["reserved_until"]) == ("r-1", 1, T0 + 10_000)
    push = result.pushes[0]
    assert (push["channel"], push["seq"], push["type"], push["priority"], push["ttl_ms"]) == (
        "driver:d-1", 5, "offer", 9, 10_000)
    assert state["push_seq"] == state["offer_seq"] == 5  # the location pushes go on from 6
    data = json.loads(push["data"])
    assert data["ride_id"] == "r-1" and data["expires_at"] == T0 + 10_000 and data["pickup_eta_s"] > 0
    assert [(r["command"], r["expires_at"], r["lat"]) for r in result.replies] == [("RESERVED", T0 + 10_000, 37.77)]


def test_a_held_driver_is_refused_until_the_ttl_has_passed() -> None:
    held = reserved_driver()
    refused = apply_offer(held, offer("RESERVE", ride="r-2"), POLICY, T0 + 9_999)
    assert refused.state is None and not refused.pushes
    assert [(r["command"], r["reason"], r["ride_id"]) for r in refused.replies] == [("REFUSED", "reserved", "r-2")]
    taken = apply_offer(held, offer("RESERVE", ride="r-2"), POLICY, T0 + 10_000)
    assert taken.state is not None and taken.state["ride_id"] == "r-2" and taken.replies[0]["command"] == "RESERVED"


def test_busy_offline_and_unknown_drivers_are_refused() -> None:
    for state, reason in ((driver(status="ON_TRIP"), "busy"), (driver(ride_id="r-0"), "busy"),
                          (driver(received_ts=T0 - 31_000), "offline")):
        result = apply_offer(state, offer("RESERVE"), POLICY, T0)
        assert result.state is None and result.replies[0]["reason"] == reason
    assert apply_offer(None, offer("RESERVE"), POLICY, T0).replies[0]["reason"] == "unknown driver"
    assert apply_offer(None, offer("ACCEPT"), POLICY, T0).replies == []


def test_a_replayed_reserve_sends_the_same_offer_again() -> None:
    held = reserved_driver()
    again = apply_offer(held, offer("RESERVE"), POLICY, T0 + 50)
    assert again.pushes[0]["seq"] == 5 and again.state is None  # the same decision again: nothing to write
    assert again.replies[0]["command"] == "RESERVED"


def test_accept_turns_the_reservation_into_an_assignment_once() -> None:
    result = apply_offer(reserved_driver(), offer("ACCEPT", attempt=0, actor="driver"), POLICY, T0 + 2_000)
    state = result.state
    assert state is not None and (state["status"], state["reserved_until"], state["ride_id"]) == ("EN_ROUTE", 0, "r-1")
    assert [(r["command"], r["attempt"]) for r in result.replies] == [("ASSIGNED", 1)]
    assert [(m["op"], m["status"]) for m in result.memberships] == [("REFRESH", "EN_ROUTE")]
    assert [s["status"] for s in result.statuses] == ["EN_ROUTE"]
    assert result.pushes[0]["type"] == "ride.assigned"
    twice = apply_offer(state, offer("ACCEPT", attempt=0), POLICY, T0 + 2_100)
    assert twice.replies[0]["command"] == "ASSIGNED" and not twice.memberships  # replayed: same answer
    assert apply_offer(state, offer("RESERVE", ride="r-2"), POLICY, T0 + 20_000).replies[0]["reason"] == "busy"


def test_a_late_or_foreign_accept_assigns_nothing() -> None:
    for state, ride, now in ((reserved_driver(), "r-1", T0 + 10_000), (reserved_driver(), "r-9", T0 + 5)):
        result = apply_offer(state, offer("ACCEPT", ride=ride), POLICY, now)
        assert not result.replies and result.pushes[0]["type"] == "offer.revoked"
        assert result.state is not None and result.state["status"] == "AVAILABLE"


def test_release_and_decline_free_only_their_own_reservation() -> None:
    held = reserved_driver()
    assert apply_offer(held, offer("RELEASE", attempt=2), POLICY, T0).state is None  # another attempt's
    released = apply_offer(held, offer("RELEASE", reason="expired"), POLICY, T0 + 10_500)
    assert released.state["ride_id"] is None and json.loads(released.pushes[0]["data"])["reason"] == "expired"
    declined = apply_offer(held, offer("DECLINE", attempt=0, actor="driver"), POLICY, T0 + 100)
    assert declined.state["ride_id"] is None and declined.replies[0]["command"] == "DECLINED"
    assert declined.replies[0]["attempt"] == 1


def test_start_and_free_follow_the_trip() -> None:
    assigned = apply_offer(reserved_driver(), offer("ACCEPT"), POLICY, T0 + 1).state
    started = apply_offer(assigned, offer("START"), POLICY, T0 + 2).state
    assert started["status"] == "ON_TRIP"
    assert apply_offer(started, offer("FREE", ride="r-2"), POLICY, T0 + 3).state is None  # not its ride
    freed = apply_offer(started, offer("FREE", reason="completed"), POLICY, T0 + 3)
    assert (freed.state["status"], freed.state["ride_id"]) == ("AVAILABLE", None)
    assert [m["status"] for m in freed.memberships] == ["AVAILABLE"]


# --- the protocol, cell by cell ------------------------------------------------------------------
# What each command does to a driver in each phase, written out independently of the code's table:
# phase (as the command finds the driver) | op | how the command's ride matches the driver's |
# the driver's phase after | the push to the driver | the reply to the ride. `FREE/busy` is a
# free driver whose status is not AVAILABLE, `FREE/stale` one whose last ping is too old. A
# combination not listed changes nothing, pushes nothing and answers nothing.
SPEC = """
UNKNOWN    RESERVE none  | -        | -                | REFUSED:unknown driver
FREE       RESERVE none  | RESERVED | offer            | RESERVED
FREE/busy  RESERVE none  | -        | -                | REFUSED:busy
FREE/stale RESERVE none  | -        | -                | REFUSED:offline
FREE       ACCEPT  none  | FREE     | offer.revoked    | -
FREE/busy  ACCEPT  none  | FREE     | offer.revoked    | -
FREE/stale ACCEPT  none  | FREE     | offer.revoked    | -
RESERVED   RESERVE same  | -        | offer (same seq) | RESERVED
RESERVED   RESERVE ride  | -        | -                | REFUSED:reserved
RESERVED   RESERVE other | -        | -                | REFUSED:reserved
RESERVED   RELEASE same  | FREE     | offer.revoked    | -
RESERVED   ACCEPT  same  | ASSIGNED | ride.assigned    | ASSIGNED
RESERVED   ACCEPT  ride  | ASSIGNED | ride.assigned    | ASSIGNED
RESERVED   ACCEPT  other | RESERVED | offer.revoked    | -
RESERVED   DECLINE same  | FREE     | offer.revoked    | DECLINED
RESERVED   DECLINE ride  | FREE     | offer.revoked    | DECLINED
RESERVED   FREE    same  | FREE     | ride.ended       | -
RESERVED   FREE    ride  | FREE     | ride.ended       | -
LAPSED     RESERVE same  | -        | offer (same seq) | RESERVED
LAPSED     RESERVE ride  | RESERVED | offer            | RESERVED
LAPSED     RESERVE other | RESERVED | offer            | RESERVED
LAPSED     RELEASE same  | FREE     | offer.revoked    | -
LAPSED     ACCEPT  same  | LAPSED   | offer.revoked    | -
LAPSED     ACCEPT  ride  | LAPSED   | offer.revoked    | -
LAPSED     ACCEPT  other | LAPSED   | offer.revoked    | -
LAPSED     DECLINE same  | FREE     | offer.revoked    | DECLINED
LAPSED     DECLINE ride  | FREE     | offer.revoked    | DECLINED
LAPSED     FREE    same  | FREE     | ride.ended       | -
LAPSED     FREE    ride  | FREE     | ride.ended       | -
ASSIGNED   RESERVE same  | -        | -                | REFUSED:busy
ASSIGNED   RESERVE ride  | -        | -                | REFUSED:busy
ASSIGNED   RESERVE other | -        | -                | REFUSED:busy
ASSIGNED   ACCEPT  same  | -        | -                | ASSIGNED
ASSIGNED   ACCEPT  ride  | -        | -                | ASSIGNED
ASSIGNED   ACCEPT  other | ASSIGNED | offer.revoked    | -
ASSIGNED   START   same  | ON_TRIP  | ride.started     | -
ASSIGNED   START   ride  | ON_TRIP  | ride.started     | -
ASSIGNED   FREE    same  | FREE     | ride.ended       | -
ASSIGNED   FREE    ride  | FREE     | ride.ended       | -
ON_TRIP    RESERVE same  | -        | -                | REFUSED:busy
ON_TRIP    RESERVE ride  | -        | -                | REFUSED:busy
ON_TRIP    RESERVE other | -        | -                | REFUSED:busy
ON_TRIP    ACCEPT  same  | -        | -                | ASSIGNED
ON_TRIP    ACCEPT  ride  | -        | -                | ASSIGNED
ON_TRIP    ACCEPT  other | ON_TRIP  | offer.revoked    | -
ON_TRIP    FREE    same  | FREE     | ride.ended       | -
ON_TRIP    FREE    ride  | FREE     | ride.ended       | -
"""


def _spec() -> dict[tuple[str, str, str], tuple[str, str, str]]:
    out = {}
    for line in SPEC.strip().splitlines():
        left, after, push, reply = (part.strip() for part in line.split("|"))
        phase, op, match = left.split()
        out[(phase, op, match)] = (after, push, reply)
    return out


def _driver_in(phase: str, match: str, op: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A driver in `phase` (at T0) and a command whose ride matches it as `match`."""
    held_ride, attempt = "r-1", 2
    ride, cmd_attempt = {"none": ("r-1", 2), "same": ("r-1", 2), "ride": ("r-1", 3), "other": ("r-9", 1)}[match]
    cmd = offer(op, ride=ride, attempt=cmd_attempt)
    base, _, variant = phase.partition("/")
    if base == "UNKNOWN":
        return None, cmd
    kw: dict[str, Any] = {"push_seq": 4, "offer_seq": 3}
    if base == "FREE":
        kw.update(status="ON_TRIP" if variant == "busy" else "AVAILABLE")
        if variant == "stale":
            kw.update(received_ts=T0 - 31_000)
    elif base in ("RESERVED", "LAPSED"):
        kw.update(ride_id=held_ride, offer_attempt=attempt, reserved_until=T0 + 5_000 if base == "RESERVED" else T0 - 1)
    else:
        kw.update(ride_id=held_ride, offer_attempt=attempt, status="EN_ROUTE" if base == "ASSIGNED" else "ON_TRIP")
    return driver(**kw), cmd


def _push_of(result: Any, prev: dict[str, Any] | None) -> str:
    if not result.pushes:
        return "-"
    (push,) = result.pushes
    assert push["channel"] == "driver:d-1"
    if prev is not None and push["seq"] == prev["offer_seq"] and push["type"] == "offer":
        return "offer (same seq)"
    assert prev is not None and push["seq"] == prev["push_seq"] + 1  # the driver's one seq source
    return str(push["type"])


def _reply_of(result: Any) -> str:
    if not result.replies:
        return "-"
    (reply,) = result.replies
    return f"REFUSED:{reply['reason']}" if reply["command"] == "REFUSED" else str(reply["command"])


@pytest.mark.parametrize("phase", ["UNKNOWN", "FREE", "FREE/busy", "FREE/stale", "RESERVED", "LAPSED", "ASSIGNED",
                                   "ON_TRIP"])
@pytest.mark.parametrize("op", ["RESERVE", "RELEASE", "ACCEPT", "DECLINE", "START", "FREE"])
def test_every_phase_and_command_does_what_the_protocol_says(phase: str, op: str) -> None:
    spec = _spec()
    matches = ("none",) if phase.split("/")[0] in ("UNKNOWN", "FREE") else ("same", "ride", "other")
    for match in matches:
        prev, cmd = _driver_in(phase, match, op)
        result = apply_offer(prev, cmd, POLICY, T0)
        want = spec.get((phase, op, match), ("-", "-", "-"))
        after = "-" if result.state is None else phase_of(result.state, T0, POLICY)
        got = (after, _push_of(result, prev), _reply_of(result))
        assert got == want, f"{phase} {op} {match}"
        if result.state is not None and prev is not None:
            assert result.state["driver_id"] == prev["driver_id"] and result.state["seq"] == prev["seq"]
        for reply in result.replies:
            assert reply["ride_id"] == cmd["ride_id"] and reply["driver_id"] == "d-1"


def test_the_code_table_has_exactly_the_specified_cells() -> None:
    """Every rule of RESERVATIONS is a cell of the specification (none left unspecified)."""
    spec = {(p.split("/")[0], op, m) for p, op, m in _spec()}
    assert set(RESERVATIONS) <= spec
    assert {cell for cell in spec if cell not in RESERVATIONS} == set()


def test_the_table_in_the_readme_is_the_codes() -> None:
    notes = (Path(__file__).parents[3] / "README.md").read_text()
    start, end = "<!-- reservations -->\n", "<!-- /reservations -->"
    copy = notes[notes.index(start) + len(start):notes.index(end)]
    assert copy == as_markdown(), "README.md is stale: paste `livetrack reservations` between its markers"


# --- outside the protocol: the driver's own status, and the orders a courier carries ---------------

@pytest.mark.parametrize("op,status", [("BREAK", "ON_BREAK"), ("OFFLINE", "OFFLINE"), ("ONLINE", "AVAILABLE")])
def test_a_driver_sets_its_own_status_and_its_cell_learns_it(op: str, status: str) -> None:
    start = driver(status="ON_BREAK" if op == "ONLINE" else "AVAILABLE")
    result = apply_driver_op(start, offer(op, ride="d-1", attempt=T0), POLICY, T0)
    assert result.state is not None and result.state["status"] == status
    assert [(s["status"]) for s in result.statuses] == [status]
    assert [(m["op"], m["status"]) for m in result.memberships] == [("REFRESH", status)]
    assert [(p["type"], json.loads(p["data"])["status"]) for p in result.pushes] == [("driver.status", status)]


@pytest.mark.parametrize("held", [{"ride_id": "r-0", "status": "EN_ROUTE"}, {"orders": ["o-1"], "status": "EN_ROUTE"}])
def test_a_driver_holding_a_ride_or_an_order_stays_as_it_is(held: dict[str, Any]) -> None:
    result = apply_driver_op(driver(**held), offer("BREAK", ride="d-1", attempt=T0), POLICY, T0)
    assert not result.statuses
    assert json.loads(result.pushes[0]["data"]) == {"driver_id": "d-1", "ride_id": "d-1", "status": "EN_ROUTE",
                                                    "refused": "ON_BREAK", "reason": "busy"}


@pytest.mark.parametrize("status", ["ON_BREAK", "OFFLINE"])
def test_a_driver_on_a_break_or_offline_is_not_reserved(status: str) -> None:
    result = apply_offer(driver(status=status), offer("RESERVE"), POLICY, T0)
    assert result.state is None and result.replies[0]["reason"] == "offline"


def test_a_courier_carries_orders_en_route_and_is_free_after_the_last() -> None:
    one = apply_driver_op(driver(), offer("CARRY", ride="o-1"), POLICY, T0)
    assert one.state is not None and (one.state["orders"], one.state["status"]) == (["o-1"], "EN_ROUTE")
    two = apply_driver_op(one.state, offer("CARRY", ride="o-2"), POLICY, T0)
    assert two.state is not None and two.state["orders"] == ["o-1", "o-2"] and not two.statuses
    assert apply_driver_op(two.state, offer("CARRY", ride="o-2"), POLICY, T0).state is None  # replayed
    assert apply_offer(two.state, offer("RESERVE"), POLICY, T0).replies[0]["reason"] == "busy"
    left = apply_driver_op(two.state, offer("DROP", ride="o-1"), POLICY, T0)
    assert left.state is not None and (left.state["orders"], left.state["status"]) == (["o-2"], "EN_ROUTE")
    free = apply_driver_op(left.state, offer("DROP", ride="o-2"), POLICY, T0)
    assert free.state is not None and (free.state["orders"], free.state["status"]) == ([], "AVAILABLE")


def test_a_courier_named_before_its_first_ping_is_remembered() -> None:
    result = apply_driver_op(None, offer("CARRY", ride="o-1"), POLICY, T0)
    assert result.state is not None and result.state["orders"] == ["o-1"] and result.state["fix_ts"] == 0
    assert phase_of(result.state, T0, POLICY) == "FREE" and not result.memberships  # no cell yet
