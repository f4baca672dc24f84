"""A ride's life, decided in one place (pure): states, transitions and what each command does.

`apply_command`: the ride as it stands + one command -> the ride after it, the RideEvents for the
`rides` audit log, the OfferCommands for the driver desk and the pushes to `ride:{id}` (whose seq
the ride record owns). Candidates come from a query function (the worker's replica of
`cell_to_drivers`, agents.candidates), so tests pass their own.

Exactly-once assignment: a driver is offered a ride only once the desk has reserved the driver
(a check-and-set where the driver's state lives, agents.reservations), and a ride becomes
ACCEPTED only when the desk has turned that same reservation into an assignment (ASSIGNED) *and*
the ride still has that offer open (attempt and driver match): a compare-and-set on the ride, in
the one partition that orders all of its commands. Every answer that arrives too late is
compensated (RELEASE or FREE back to the driver), so no driver stays held by a ride that moved on.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence, TypeVar

from agents.commands import offer_command, order_event
from agents.errors import Rejected
from agents.estimates import (
    PRODUCTS, AcceptanceScore, Candidate, SpeedLookup, SurgeLookup, any_acceptance, constant_speed, fare_estimate,
    no_surge, rank_candidates, travel_time_s,
)
from agents.geo import cell_of, haversine_m
from infra.settings import Settings
from schemas import typed

__all__ = [
    "ACTIVE", "FINAL", "ORDERS_ACTOR", "TRANSITIONS", "CandidateQuery", "DispatchPolicy", "IllegalTransition", "Step",
    "apply_command", "held_until", "next_state", "may_cancel", "ride_channel",
]

log = logging.getLogger(__name__)

Ride = typed.Ride
Command = typed.RideCommand
CandidateQuery = Callable[[str, int, Collection[str]], list[Candidate]]  # (cell, k, exclude) -> candidates

# (state, event) -> the state after it; anything else is refused.
TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, "REQUESTED"): "REQUESTED",
    ("REQUESTED", "OFFERED"): "OFFERED",
    ("REQUESTED", "CANCELLED"): "CANCELLED",
    ("REQUESTED", "NO_DRIVERS"): "NO_DRIVERS",
    ("OFFERED", "DECLINED"): "REQUESTED",
    ("OFFERED", "EXPIRED"): "REQUESTED",
    ("OFFERED", "ACCEPTED"): "ACCEPTED",
    ("OFFERED", "CANCELLED"): "CANCELLED",
    ("ACCEPTED", "STARTED"): "ONGOING",
    ("ACCEPTED", "CANCELLED"): "CANCELLED",
    ("ONGOING", "COMPLETED"): "COMPLETED",
    ("ONGOING", "CANCELLED"): "CANCELLED",
}
FINAL = frozenset({"COMPLETED", "CANCELLED", "NO_DRIVERS"})
ACTIVE = frozenset({"ACCEPTED", "ONGOING"})
STATE_PRIORITY = 8  # ride state changes: above location moves (3), below offers (9)
DRIVER_PRIORITY = 5
RIDE_PUSH_TTL_MS = 60_000
ME = "dispatch"  # actor_id of what the rides agent asks for itself
ORDERS_ACTOR = "orders"  # actor_id of the orders agent's commands to its delivery trips
# What a delivery trip tells its order: the courier found, or none.
ORDER_NEWS = {"ACCEPTED": "COURIER_ASSIGNED", "NO_DRIVERS": "FAILED"}


class IllegalTransition(Rejected):
    """An event the ride's state does not allow."""


def next_state(state: str | None, event: str) -> str:
    """The state a ride in `state` is in after `event`; IllegalTransition if it cannot happen."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event} is not allowed in state {state}") from None


def _by_its_order(ride: Ride, actor: str, actor_id: str) -> bool:
    """A delivery trip's command from the orders agent: its order was picked up, delivered or ended."""
    return bool(ride["order_id"]) and actor == "system" and actor_id == ORDERS_ACTOR


def may_cancel(ride: Ride, actor: str, actor_id: str) -> bool:
    """Ops may cancel any unfinished ride; the rider until the trip starts; the assigned driver before it
    starts; a delivery trip's order (the orders agent) when the order ends."""
    state = ride["state"]
    if state in FINAL:
        return False
    if actor == "ops" or _by_its_order(ride, actor, actor_id):
        return True
    if actor == "rider":
        return actor_id == ride["rider_id"] and state != "ONGOING"
    return actor == "driver" and actor_id == ride["driver_id"] and state == "ACCEPTED"


def ride_channel(ride_id: str) -> str:
    return f"ride:{ride_id}"


@dataclass(frozen=True)
class DispatchPolicy:
    """Matching and pricing knobs, from settings once; lookups plug in features (surge, speeds)."""

    h3_resolution: int = 9
    k_min: int = 1
    k_max: int = 3
    min_candidates: int = 3
    candidate_max_age_ms: int = 60_000
    offer_ttl_ms: int = 10_000
    offer_grace_ms: int = 500
    reserve_timeout_ms: int = 3_000
    retry_ms: int = 1_000
    max_wait_ms: int = 30_000
    eta_push_threshold_s: float = 30.0
    push_min_distance_m: float = 50.0
    speed: SpeedLookup = field(default=constant_speed(8.0))
    surge: SurgeLookup = no_surge
    acceptance: AcceptanceScore = any_acceptance

    @classmethod
    def from_settings(cls, s: Settings, **lookups: Any) -> "DispatchPolicy":
        return cls(
            h3_resolution=s.h3_resolution, k_min=s.dispatch_k_min, k_max=max(s.dispatch_k_min, s.dispatch_k_max),
            min_candidates=s.dispatch_min_candidates, candidate_max_age_ms=s.dispatch_candidate_max_age_ms,
            offer_ttl_ms=s.offer_ttl_ms, offer_grace_ms=s.offer_grace_ms, reserve_timeout_ms=s.reserve_timeout_ms,
            retry_ms=s.dispatch_retry_ms, max_wait_ms=s.dispatch_max_wait_ms,
            eta_push_threshold_s=s.eta_push_threshold_s, push_min_distance_m=s.ride_push_min_distance_m,
            **{"speed": constant_speed(s.dispatch_speed_mps), **lookups},
        )

    def eta_s(self, lat1: float, lng1: float, lat2: float, lng2: float) -> float:
        return round(travel_time_s(lat1, lng1, lat2, lng2, speed=self.speed, resolution=self.h3_resolution), 1)


@dataclass
class Step:
    """What one command does to one ride: the ride after it (None: unchanged) and what to send."""

    ride: Ride | None
    events: list[typed.RideEvent] = field(default_factory=list)
    offers: list[typed.OfferCommand] = field(default_factory=list)
    pushes: list[typed.PushMessage] = field(default_factory=list)
    order_events: list[typed.OrderEvent] = field(default_factory=list)  # a delivery trip's, for its order
    refusal: str | None = None  # why the command changed nothing, when it was not simply stale


T = TypeVar("T")


class _Apply:
    """One command applied to a copy of the ride; collects the step's outputs."""

    def __init__(self, ride: Ride | None, cmd: Command, policy: DispatchPolicy, query: CandidateQuery,
                 now_ms: int) -> None:
        self.ride = ride.copy() if ride is not None else None
        self.cmd = cmd
        self.p = policy
        self.query = query
        self.now = now_ms
        self.step = Step(self.ride)

    @property
    def r(self) -> Ride:
        """The ride (its handlers run only once there is one)."""
        assert self.ride is not None, f"{self.cmd['command']} handled for an unknown ride"
        return self.ride

    def need(self, value: T | None, what: str) -> T:
        """A field the command must carry; Rejected when it does not."""
        if value is None:
            raise Rejected(f"{self.cmd['command']} without {what}")
        return value

    def driver(self) -> str:
        return self.need(self.cmd["driver_id"], "driver_id")

    def position(self) -> tuple[float, float]:
        return self.need(self.cmd["lat"], "lat"), self.need(self.cmd["lng"], "lng")

    # --- outputs -----------------------------------------------------------
    def emit(self, event: str, actor: str, *, driver_id: str | None = None, reason: str | None = None,
             extra: Mapping[str, Any] | None = None) -> None:
        """Apply `event` (refused if illegal), log it to `rides` and push it to `ride:{id}`."""
        r = self.r
        r["state"] = next_state(r["state"] if r["version"] else None, event)
        r["version"] += 1
        r["updated_ts"] = self.now
        r["reason"] = reason
        logged_driver = driver_id if driver_id is not None else r["driver_id"]
        self.step.events.append({
            "ride_id": r["ride_id"], "version": r["version"], "event": event, "state": r["state"], "ts": self.now,
            "actor": actor, "rider_id": r["rider_id"], "product": r["product"], "pickup_lat": r["pickup_lat"],
            "pickup_lng": r["pickup_lng"], "dest_lat": r["dest_lat"], "dest_lng": r["dest_lng"],
            "pickup_cell": r["pickup_cell"], "driver_id": logged_driver, "fare_estimate": r["fare_estimate"],
            "pickup_eta_s": r["pickup_eta_s"], "reason": reason, "order_id": r["order_id"],
        })
        if r["order_id"] and event in ORDER_NEWS:
            self.order_event(event, reason)
        data = {
            "ride_id": r["ride_id"], "state": r["state"], "event": event, "version": r["version"],
            "rider_id": r["rider_id"], "product": r["product"], "fare_estimate": r["fare_estimate"],
            "pickup_eta_s": r["pickup_eta_s"], "reason": reason,
            "pickup": {"lat": r["pickup_lat"], "lng": r["pickup_lng"]},
            "destination": {"lat": r["dest_lat"], "lng": r["dest_lng"]},
            "driver_id": r["driver_id"], **(extra or {}),  # the rider learns who once assigned
        }
        self.push("ride.state", data, STATE_PRIORITY)

    def order_event(self, event: str, reason: str | None) -> None:
        """What a delivery trip's order learns: its courier (ACCEPTED), or that none was found."""
        r = self.r
        assert r["order_id"] is not None
        self.step.order_events.append(order_event(
            r["order_id"], f"{r['ride_id']}:v{r['version']}", "livetrack", ORDER_NEWS[event], self.now,
            courier_id=r["driver_id"] if event == "ACCEPTED" else None,
            reason=reason if event != "NO_DRIVERS" else "no courier found"))

    def push(self, kind: str, data: Mapping[str, Any], priority: int) -> None:
        r = self.r
        r["push_seq"] += 1
        self.step.pushes.append({
            "channel": ride_channel(r["ride_id"]), "seq": r["push_seq"], "type": kind, "priority": priority,
            "ttl_ms": RIDE_PUSH_TTL_MS, "sent_ts": self.now, "event_ts": self.cmd["ts"],
            "data": json.dumps(data, separators=(",", ":")),
        })

    def offer(self, op: str, driver_id: str, *, attempt: int, reason: str | None = None, ttl_ms: int = 0,
              trip: Ride | None = None) -> None:
        """An OfferCommand for the driver desk; a RESERVE carries the `trip` shown in the offer."""
        self.step.offers.append(offer_command(
            driver_id, op, self.cmd["ride_id"], self.now, "system", attempt=attempt, ttl_ms=ttl_ms, reason=reason,
            pickup_lat=trip["pickup_lat"] if trip else None, pickup_lng=trip["pickup_lng"] if trip else None,
            dest_lat=trip["dest_lat"] if trip else None, dest_lng=trip["dest_lng"] if trip else None,
            fare_estimate=trip["fare_estimate"] if trip else None))

    def unchanged(self, refusal: str | None = None) -> Step:
        return Step(None, refusal=refusal)

    # --- matching ----------------------------------------------------------
    def candidates(self) -> list[Candidate]:
        """Ranked untried candidates, widening the k-ring until there are enough (or k_max)."""
        r, p = self.r, self.p
        exclude = set(r["tried"]) | set(r["busy"])
        k = max(r["ring"], p.k_min)
        found = self.query(r["pickup_cell"], k, exclude)
        while len(found) < p.min_candidates and k < p.k_max:
            k += 1
            found = self.query(r["pickup_cell"], k, exclude)
        r["ring"] = k
        return rank_candidates(found, r["pickup_lat"], r["pickup_lng"], speed=p.speed, acceptance=p.acceptance,
                               resolution=p.h3_resolution)

    def offer_next(self, ranked: Sequence[Candidate] | None = None) -> None:
        """Ask the best untried candidate's partition for a reservation; or wait and look again;
        or give up once the ride has waited max_wait_ms."""
        r, p = self.r, self.p
        r["offer_driver"] = None
        if self.now - r["requested_ts"] >= p.max_wait_ms:
            r["deadline_ms"] = 0
            self.emit("NO_DRIVERS", "system", reason=f"no driver accepted within {p.max_wait_ms} ms")
            return
        ranked = self.candidates() if ranked is None else ranked
        if not ranked:
            log.debug("ride %s: no candidate within k=%d; looking again in %d ms", r["ride_id"], r["ring"], p.retry_ms)
            r["deadline_ms"] = self.now + p.retry_ms  # everyone near is busy or tried: look again soon
            return
        best = ranked[0]
        r["attempt"] += 1
        r["offer_driver"] = best.driver_id
        r["deadline_ms"] = self.now + p.reserve_timeout_ms
        self.offer("RESERVE", best.driver_id, attempt=r["attempt"], ttl_ms=p.offer_ttl_ms, trip=r)

    def drop_offer(self, *, busy: bool = False) -> None:
        """The open offer (or reservation asked for) is over: never ask that driver again (busy: not now)."""
        r = self.r
        driver = self.need(r["offer_driver"], "an open offer")
        if busy:
            r["busy"] = [*r["busy"], driver]
        else:
            r["tried"] = [*r["tried"], driver]
        r["offer_driver"] = None

    def answers_open_offer(self, state: str) -> bool:
        """The command is the driver's answer to the offer this ride has open in `state`."""
        r, c = self.ride, self.cmd
        return (r is not None and r["state"] == state and r["offer_driver"] == c["driver_id"]
                and r["attempt"] == c["attempt"])

    # --- commands ----------------------------------------------------------
    def request(self) -> Step:
        c, p = self.cmd, self.p
        if self.ride is not None:
            return self.unchanged("ride exists (request replayed)")
        product = self.need(c["product"], "product")
        if product not in PRODUCTS:
            raise Rejected(f"unknown product {product!r}")
        pickup = self.need(c["pickup_lat"], "pickup_lat"), self.need(c["pickup_lng"], "pickup_lng")
        dest = self.need(c["dest_lat"], "dest_lat"), self.need(c["dest_lng"], "dest_lng")
        pickup_cell = cell_of(*pickup, p.h3_resolution)
        distance = haversine_m(*pickup, *dest)
        duration = p.eta_s(*pickup, *dest)
        self.ride = self.step.ride = {
            "ride_id": c["ride_id"], "version": 0, "state": "REQUESTED", "rider_id": self.need(c["rider_id"], "rider_id"),
            "product": product, "pickup_lat": pickup[0], "pickup_lng": pickup[1], "dest_lat": dest[0],
            "dest_lng": dest[1], "pickup_cell": pickup_cell, "requested_ts": self.now, "updated_ts": self.now,
            "fare_estimate": fare_estimate(distance, duration, product, surge=p.surge(pickup_cell)),
            "pickup_eta_s": None, "driver_id": None, "offer_driver": None, "attempt": 0, "deadline_ms": 0, "ring": 0,
            "tried": [], "busy": [], "push_seq": 0, "driver_lat": None, "driver_lng": None, "pushed_lat": None,
            "pushed_lng": None, "pushed_eta_s": None, "reason": None, "order_id": c["order_id"], "applied_offset": -1,
            "outbox": [],
        }
        ranked = self.candidates()
        self.r["pickup_eta_s"] = ranked[0].eta_s if ranked else None
        self.emit("REQUESTED", c["actor"])
        self.offer_next(ranked)
        return self.step

    def timeout(self) -> Step:
        r = self.r
        if r["deadline_ms"] != self.cmd["expires_at"] or r["state"] in FINAL:
            return self.unchanged()  # a deadline the ride has already moved past
        driver = r["offer_driver"]
        if r["state"] == "OFFERED" and driver is not None:
            self.offer("RELEASE", driver, attempt=r["attempt"], reason="expired")
            self.drop_offer()
            self.emit("EXPIRED", "system", driver_id=driver, reason="offer not answered in time")
        elif driver is not None:
            self.offer("RELEASE", driver, attempt=r["attempt"], reason="no answer to the reservation")
            self.drop_offer()
        elif r["state"] == "REQUESTED":
            r["busy"] = []  # after the wait, drivers that were held elsewhere may be free
        else:
            return self.unchanged()
        self.offer_next()
        return self.step

    def reserved(self) -> Step:
        c = self.cmd
        if not self.answers_open_offer("REQUESTED"):
            if self.answers_open_offer("OFFERED"):
                return self.unchanged()  # the same answer again (replayed)
            self.offer("RELEASE", self.driver(), attempt=c["attempt"], reason="ride moved on")
            return Step(None, offers=self.step.offers)
        r = self.r
        lat, lng = self.position()
        r["driver_lat"], r["driver_lng"] = lat, lng
        r["pickup_eta_s"] = self.p.eta_s(lat, lng, r["pickup_lat"], r["pickup_lng"])
        r["deadline_ms"] = c["expires_at"] + self.p.offer_grace_ms
        self.emit("OFFERED", "system", driver_id=c["driver_id"])
        return self.step

    def refused(self) -> Step:
        if not self.answers_open_offer("REQUESTED"):
            return self.unchanged()
        log.debug("ride %s: driver %s refused the reservation: %s", self.r["ride_id"], self.cmd["driver_id"],
                  self.cmd["reason"])
        self.drop_offer(busy=self.cmd["reason"] == "reserved")
        self.offer_next()
        return self.step

    def declined(self) -> Step:
        if not self.answers_open_offer("OFFERED"):
            return self.unchanged()  # the desk already released the driver
        driver = self.r["offer_driver"]
        self.drop_offer()
        self.emit("DECLINED", "driver", driver_id=driver, reason=self.cmd["reason"] or "declined by driver")
        self.offer_next()
        return self.step

    def assigned(self) -> Step:
        c = self.cmd
        driver = self.driver()
        if not self.answers_open_offer("OFFERED"):
            if self.ride is not None and self.ride["state"] in ACTIVE and self.ride["driver_id"] == driver:
                return self.unchanged()  # the same answer again (replayed)
            # The driver took an offer this ride no longer has open: give the driver back.
            self.offer("FREE", driver, attempt=c["attempt"], reason="offer no longer open")
            return Step(None, offers=self.step.offers)
        r = self.r
        lat, lng = self.position()
        r["driver_id"], r["offer_driver"], r["deadline_ms"] = driver, None, 0
        r["driver_lat"], r["driver_lng"] = lat, lng
        eta = r["pickup_eta_s"] = self.p.eta_s(lat, lng, r["pickup_lat"], r["pickup_lng"])
        r["pushed_lat"], r["pushed_lng"], r["pushed_eta_s"] = lat, lng, eta
        self.emit("ACCEPTED", "driver", extra={"driver": _driver_view(driver, lat, lng, eta, "pickup")})
        return self.step

    def cancel(self) -> Step:
        r, c = self.r, self.cmd
        if not may_cancel(r, c["actor"], c["actor_id"]):
            return self.unchanged(f"{c['actor']} {c['actor_id']} may not cancel a ride in state {r['state']}")
        if r["offer_driver"] is not None:
            self.offer("RELEASE", r["offer_driver"], attempt=r["attempt"], reason="ride cancelled")
            r["offer_driver"] = None
        if r["driver_id"] is not None:
            self.offer("FREE", r["driver_id"], attempt=r["attempt"], reason="ride cancelled")
        r["deadline_ms"] = 0
        self.emit("CANCELLED", c["actor"], reason=c["reason"] or f"cancelled by {c['actor']}")
        return self.step

    def by_assigned_driver(self, state: str, event: str) -> Step:
        r, c = self.r, self.cmd
        driver = r["driver_id"]
        if c["actor"] != "ops" and not _by_its_order(r, c["actor"], c["actor_id"]) and (c["actor"] != "driver" or c["actor_id"] != driver):
            return self.unchanged(f"{c['actor']} {c['actor_id']} is not the ride's driver")
        if r["state"] != state or driver is None:
            return self.unchanged(f"{event} needs state {state}, ride is {r['state']}")
        if event == "STARTED":
            self.offer("START", driver, attempt=r["attempt"])
            eta = self.p.eta_s(r["pickup_lat"], r["pickup_lng"], r["dest_lat"], r["dest_lng"])
            r["pushed_eta_s"], r["pushed_lat"], r["pushed_lng"] = eta, r["pickup_lat"], r["pickup_lng"]
            self.emit(event, c["actor"], extra={"driver": _driver_view(driver, r["driver_lat"], r["driver_lng"], eta,
                                                                      "destination")})
        else:
            self.offer("FREE", driver, attempt=r["attempt"], reason="completed")
            self.emit(event, c["actor"])
        return self.step

    def driver_moved(self) -> Step:
        """The assigned driver moved: recompute the ETA; push when it moved far or the ETA changed enough."""
        r, c, p = self.r, self.cmd, self.p
        if r["state"] not in ACTIVE or r["driver_id"] != c["driver_id"]:
            return self.unchanged()
        lat, lng = self.position()
        to_pickup = r["state"] == "ACCEPTED"
        target = (r["pickup_lat"], r["pickup_lng"]) if to_pickup else (r["dest_lat"], r["dest_lng"])
        eta = p.eta_s(lat, lng, *target)
        last, pushed_lat, pushed_lng = r["pushed_eta_s"], r["pushed_lat"], r["pushed_lng"]
        moved = (pushed_lat is None or pushed_lng is None
                 or haversine_m(pushed_lat, pushed_lng, lat, lng) >= p.push_min_distance_m)
        eta_changed = last is None or abs(eta - last) >= p.eta_push_threshold_s
        if not (moved or eta_changed):
            return self.unchanged()
        if eta_changed:
            r["pushed_eta_s"] = eta
        r["driver_lat"], r["driver_lng"], r["pushed_lat"], r["pushed_lng"] = lat, lng, lat, lng
        self.push("ride.driver", {"ride_id": r["ride_id"], "state": r["state"], **_driver_view(
            r["driver_id"], lat, lng, r["pushed_eta_s"], "pickup" if to_pickup else "destination")},
            DRIVER_PRIORITY)
        return self.step


def _driver_view(driver_id: str | None, lat: float | None, lng: float | None, eta_s: float | None,
                 to: str) -> dict[str, Any]:
    return {"driver_id": driver_id, "lat": lat, "lng": lng, "eta_s": eta_s, "eta_to": to}


_HANDLERS: dict[str, Callable[[_Apply], Step]] = {
    "REQUEST": _Apply.request,
    "TIMEOUT": _Apply.timeout,
    "RESERVED": _Apply.reserved,
    "REFUSED": _Apply.refused,
    "DECLINED": _Apply.declined,
    "ASSIGNED": _Apply.assigned,
    "CANCEL": _Apply.cancel,
    "START": lambda a: a.by_assigned_driver("ACCEPTED", "STARTED"),
    "COMPLETE": lambda a: a.by_assigned_driver("ONGOING", "COMPLETED"),
    "DRIVER_MOVED": _Apply.driver_moved,
}


def apply_command(ride: Ride | None, cmd: Command, policy: DispatchPolicy, query: CandidateQuery,
                  now_ms: int) -> Step:
    """Decide one command against the ride as it stands (pure; `query` only reads)."""
    if ride is None and cmd["command"] not in ("REQUEST", "RESERVED", "ASSIGNED"):
        return Step(None, refusal="unknown ride" if cmd["actor"] != "system" else None)
    return _HANDLERS[cmd["command"]](_Apply(ride, cmd, policy, query, now_ms))


HELD_MAX = 50_000


def held_until(cmd: Command, now_ms: int, busy_ms: int) -> int | None:
    """Until when an answer of the offers agent says its driver is not free (0: free now; None: it does not say)."""
    command, reason = cmd["command"], cmd["reason"]
    if command == "RESERVED" or (command == "REFUSED" and reason == "reserved"):
        return cmd["expires_at"]
    if command in ("ASSIGNED", "REFUSED"):
        return now_ms + busy_ms  # busy, offline or unknown: by then the replica shows it
    if command == "DECLINED":
        return 0
    return None
