"""What one GPS ping does to its driver (pure): accept it or say why not, and what to send.

`apply_ping`: the driver's previous state + a ping -> the verdict, the new state, the push to
`driver:{id}` when the move is significant (distance or time since the last push), the
cell-membership changes and, for a driver on a trip, the move its ride learns of. Values are
the decoded Avro dicts of the Records in `schemas.records` (a LocationEvent, a DriverState):
building Faust Records here cost ~50 us a ping.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agents.commands import order_event, ride_command
from agents.geo import cell_of, haversine_m
from infra.settings import Settings
from schemas import typed

__all__ = [
    "ACCEPTED", "DUPLICATE", "STALE", "JUMP", "INVALID", "SIGHTED", "DriverPolicy", "PingResult", "apply_ping",
    "driver_channel", "location_data",
]

ACCEPTED, DUPLICATE, STALE, JUMP, INVALID = "accepted", "duplicate", "stale", "jump", "invalid"
# A fix refused only because a newer one was applied is still a true sighting of the driver; sending
# these again is also what makes a batch replayed after a crash re-send its sightings (features dedup).
SIGHTED = (ACCEPTED, DUPLICATE, STALE)
LOCATION_PRIORITY = 3  # 0 = lowest, 9 = highest; offers and status changes rank above moves
Ping = typed.LocationEvent
State = typed.DriverState


@dataclass(frozen=True)
class DriverPolicy:
    """Thresholds the drivers agent applies, taken from settings once."""

    h3_resolution: int = 9
    max_speed_mps: float = 83.0
    # GPS error: two fixes this far apart are never called a jump, whatever the time between.
    jump_slack_m: float = 150.0
    push_min_distance_m: float = 10.0
    push_min_interval_ms: int = 5000
    membership_refresh_ms: int = 30_000
    push_ttl_ms: int = 30_000

    @classmethod
    def from_settings(cls, s: Settings) -> "DriverPolicy":
        return cls(
            h3_resolution=s.h3_resolution, max_speed_mps=s.max_speed_mps,
            push_min_distance_m=s.push_min_distance_m, push_min_interval_ms=s.push_min_interval_ms,
            membership_refresh_ms=s.membership_refresh_ms, push_ttl_ms=s.push_location_ttl_ms,
        )


@dataclass(frozen=True)
class PingResult:
    """What one ping does: the verdict and, when accepted, what to write and send."""

    verdict: str
    state: State | None = None
    push: typed.PushMessage | None = None
    memberships: tuple[typed.CellMembership, ...] = ()
    ride_move: typed.RideCommand | None = None  # DRIVER_MOVED: the driver's ride learns of the move
    order_moves: tuple[typed.OrderEvent, ...] = ()  # COURIER_MOVED: each order the courier carries


def driver_channel(driver_id: str) -> str:
    return f"driver:{driver_id}"


def _is_jump(prev: State, ev: Ping, policy: DriverPolicy) -> bool:
    dt_s = max(0.0, (ev["fix_ts"] - prev["fix_ts"]) / 1000.0)
    allowed = policy.max_speed_mps * dt_s + policy.jump_slack_m
    return bool(haversine_m(prev["lat"], prev["lng"], ev["lat"], ev["lng"]) > allowed)


def _verdict(prev: State | None, ev: Ping, policy: DriverPolicy) -> str:
    if prev is None or prev["fix_ts"] == 0:  # never pinged (a command named the driver first)
        return ACCEPTED
    if ev["seq"] == prev["seq"]:
        return DUPLICATE
    if ev["seq"] < prev["seq"]:
        return STALE
    return JUMP if _is_jump(prev, ev, policy) else ACCEPTED


def _significant(prev: State | None, ev: Ping, policy: DriverPolicy) -> bool:
    if prev is None or prev["push_seq"] == 0:
        return True
    if ev["fix_ts"] - prev["pushed_ts"] >= policy.push_min_interval_ms:
        return True
    return haversine_m(prev["pushed_lat"], prev["pushed_lng"], ev["lat"], ev["lng"]) >= policy.push_min_distance_m


def location_data(state: State) -> dict[str, Any]:
    """The public view of a driver: snapshot, GET body and push payload."""
    return {
        "driver_id": state["driver_id"], "lat": state["lat"], "lng": state["lng"], "seq": state["seq"],
        "ts": state["fix_ts"], "speed": state["speed"], "bearing": state["bearing"],
        "accuracy": state["accuracy"], "status": state["status"], "cell": state["cell"],
    }


def _location_push(state: State, ev: Ping, policy: DriverPolicy, now_ms: int) -> typed.PushMessage:
    return {
        "channel": driver_channel(state["driver_id"]), "seq": state["push_seq"], "type": "driver.location",
        "priority": LOCATION_PRIORITY, "ttl_ms": policy.push_ttl_ms, "sent_ts": now_ms,
        "event_ts": ev["received_ts"], "data": json.dumps(location_data(state), separators=(",", ":")),
    }


def _membership(cell: str, ev: Ping, op: str, status: str) -> typed.CellMembership:
    return {"cell": cell, "driver_id": ev["driver_id"], "op": op, "status": status, "ts": ev["fix_ts"]}


def _memberships(prev: State | None, cell: str, status: str, ev: Ping,
                 policy: DriverPolicy) -> tuple[typed.CellMembership, ...]:
    if prev is None or not prev["cell"]:
        return (_membership(cell, ev, "JOIN", status),)
    if prev["cell"] != cell:
        return (_membership(prev["cell"], ev, "LEAVE", status), _membership(cell, ev, "JOIN", status))
    if ev["fix_ts"] - prev["membership_ts"] >= policy.membership_refresh_ms:
        return (_membership(cell, ev, "REFRESH", status),)
    return ()


def _ride_move(state: State, ev: Ping) -> typed.RideCommand | None:
    """The assigned driver's significant move, for its ride (ETA and the rider's map)."""
    ride = state["ride_id"]
    if not ride or state["reserved_until"]:
        return None
    return ride_command(ride, "DRIVER_MOVED", ev["received_ts"], "driver", state["driver_id"],
                        driver_id=state["driver_id"], lat=state["lat"], lng=state["lng"])


def _order_moves(state: State, ev: Ping) -> tuple[typed.OrderEvent, ...]:
    """The courier's significant move, for each order it carries (the customer's map and ETA).
    The event id is the ping's, so a replayed ping's moves are dropped as duplicates."""
    return tuple(order_event(order, f"{state['driver_id']}:{ev['seq']}", "livetrack", "COURIER_MOVED", ev["fix_ts"],
                             courier_id=state["driver_id"], lat=state["lat"], lng=state["lng"])
                 for order in state["orders"])


def _replayed(prev: State, ev: Ping, policy: DriverPolicy, now_ms: int) -> PingResult:
    """The ping that made the current state, seen again (a device retry, or a batch replayed
    after a crash before its outputs were acked): send its outputs again. Same seq, so
    the gateway and the cells agent drop what they already have."""
    push = _location_push(prev, ev, policy, now_ms) if prev["pushed_ts"] == ev["fix_ts"] else None
    joins = (_membership(prev["cell"], ev, "JOIN", prev["status"]),) if prev["membership_ts"] == ev["fix_ts"] else ()
    return PingResult(DUPLICATE, None, push, joins)


def apply_ping(prev: State | None, ev: Ping, policy: DriverPolicy, now_ms: int) -> PingResult:
    """Decide one ping against the driver's previous state (pure)."""
    verdict = _verdict(prev, ev, policy)
    if verdict == DUPLICATE and prev is not None:
        return _replayed(prev, ev, policy, now_ms)
    if verdict != ACCEPTED:
        return PingResult(verdict)
    cell = cell_of(ev["lat"], ev["lng"], policy.h3_resolution)
    status = prev["status"] if prev is not None else "AVAILABLE"
    memberships = _memberships(prev, cell, status, ev, policy)
    significant = _significant(prev, ev, policy)
    base = prev if prev is not None and not significant else None
    state: State = {
        "driver_id": ev["driver_id"], "seq": ev["seq"], "lat": ev["lat"], "lng": ev["lng"],
        "fix_ts": ev["fix_ts"], "received_ts": ev["received_ts"], "cell": cell, "status": status,
        "push_seq": (prev["push_seq"] if prev else 0) + (1 if significant else 0),
        "pushed_lat": base["pushed_lat"] if base else ev["lat"],
        "pushed_lng": base["pushed_lng"] if base else ev["lng"],
        "pushed_ts": base["pushed_ts"] if base else ev["fix_ts"],
        "membership_ts": ev["fix_ts"] if memberships or prev is None else prev["membership_ts"],
        "speed": ev["speed"], "bearing": ev["bearing"], "accuracy": ev["accuracy"],
        # Decided by dispatch (agents.reservations) on this same record; a ping carries them over.
        "ride_id": prev["ride_id"] if prev else None, "offer_attempt": prev["offer_attempt"] if prev else 0,
        "reserved_until": prev["reserved_until"] if prev else 0, "offer_seq": prev["offer_seq"] if prev else 0,
        "orders": prev["orders"] if prev else [],
    }
    push = _location_push(state, ev, policy, now_ms) if significant else None
    move = _ride_move(state, ev) if significant else None
    return PingResult(ACCEPTED, state, push, memberships, move, _order_moves(state, ev) if significant else ())
