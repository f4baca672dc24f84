"""The gateway's side of dispatch: its view of rides, request parsing, and commands to the worker.

Every gateway node follows the whole `rides` audit log (infra.tail) into a `RideView`: who rides
what, in which state, with which driver. That is how any node, however many there are, answers
`GET /v1/rides/{id}`, authorises `ride:{id}` subscriptions (the ride's rider) and learns the outcome
of a command it sent. Decisions are never taken here: rider, driver and ops actions become
RideCommands (topic `ride-commands`) or, for a driver's answer to an offer, OfferCommands (topic
`offers`, decided where the driver's reservation lives); the view only refuses early what it
already knows to be refused.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any, Callable

from agents.commands import offer_command
from agents.estimates import PRODUCTS
from agents.trips import FINAL
from gateway.auth import Principal, may_publish
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.waiters import Waiters
from infra.clock import now_ms
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.tail import TopicTail
from schemas.avro import codec_for
from schemas.records import ID_MAX_LEN, ID_PATTERN, OfferCommand, RideCommand, RideEvent
from schemas.topics import OFFERS, RIDE_COMMANDS, RIDES

__all__ = ["DRIVER_STATUS_OPS", "RideView", "RideDesk", "parse_ride_request", "point_of", "ride_id_for"]
# What a driver's app may say of itself -> the desk's op (agents.reservations.STATUS_OPS).
DRIVER_STATUS_OPS = {"online": "ONLINE", "offline": "OFFLINE", "break": "BREAK"}

ViewRide = dict[str, Any]
Predicate = Callable[[ViewRide], bool]
# Fields a client may send but the server computes: accepted and ignored, never trusted.
IGNORED_FIELDS = frozenset({"fare_estimate", "pickup_eta_s", "fare", "eta"})
REQUEST_FIELDS = frozenset({"pickup", "destination", "product", "rider_id"})
ID_RE = re.compile(ID_PATTERN)
LAG_GRACE_S = 0.5  # a ride this node has not seen yet may just be on its way through `rides`
EVENTS_KEPT = 64  # per ride in the view (a ride has a few dozen events at most)


def point_of(body: dict[str, Any], name: str, problems: list[dict[str, Any]]) -> tuple[float, float] | None:
    """`body[name]` as (lat, lng), or None with the reasons added to `problems`."""
    value = body.get(name)
    if not isinstance(value, dict):
        problems.append({"field": name, "reason": "is required: an object with lat and lng"})
        return None
    out = []
    for axis, limit in (("lat", 90), ("lng", 180)):
        v = value.get(axis)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            problems.append({"field": f"{name}.{axis}", "reason": "must be a number"})
        elif not -limit <= v <= limit:
            problems.append({"field": f"{name}.{axis}", "reason": f"must be between -{limit} and {limit}"})
        else:
            out.append(float(v))
    return (out[0], out[1]) if len(out) == 2 else None


def parse_ride_request(body: Any, principal: Principal) -> dict[str, Any]:
    """The REQUEST fields of a `POST /v1/rides` body, or InvalidInput naming every bad field."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", [{"field": "", "reason": "must be a JSON object"}])
    problems: list[dict[str, Any]] = [
        {"field": k, "reason": "unknown field"} for k in body if k not in REQUEST_FIELDS | IGNORED_FIELDS
    ]
    pickup, dest = point_of(body, "pickup", problems), point_of(body, "destination", problems)
    product = body.get("product", "standard")
    if product not in PRODUCTS:
        problems.append({"field": "product", "reason": f"must be one of {', '.join(PRODUCTS)}"})
    rider = body.get("rider_id") if principal.role == "ops" else principal.sub
    if principal.role == "ops" and not (isinstance(rider, str) and ID_RE.fullmatch(rider)):
        problems.append({"field": "rider_id", "reason": f"an ops request names the rider (1-{ID_MAX_LEN} id chars)"})
    elif principal.role != "ops" and "rider_id" in body and body["rider_id"] != principal.sub:
        problems.append({"field": "rider_id", "reason": "a rider requests rides for itself only"})
    if problems:
        raise InvalidInput(f"{len(problems)} invalid field(s)", problems)
    assert pickup is not None and dest is not None
    return {"rider_id": rider, "product": product, "pickup_lat": pickup[0], "pickup_lng": pickup[1],
            "dest_lat": dest[0], "dest_lng": dest[1]}


def ride_id_for(rider_id: str, idempotency_key: str | None) -> str:
    """A new ride id; the same one for the same rider and Idempotency-Key (a retried POST)."""
    if idempotency_key:
        return "r-" + hashlib.sha256(f"{rider_id}\0{idempotency_key}".encode()).hexdigest()[:24]
    return "r-" + uuid.uuid4().hex[:24]


class RideView:
    """Latest state of each ride seen on `rides`, and waiters for what happens next to one."""

    def __init__(self) -> None:
        self.rides: dict[str, ViewRide] = {}
        self._waiters = Waiters()

    def rider_of(self, ride_id: str) -> str | None:
        """The rider of a ride (may_subscribe's `ride_rider`)."""
        ride = self.rides.get(ride_id)
        return ride["rider_id"] if ride else None

    def get(self, ride_id: str) -> ViewRide | None:
        return self.rides.get(ride_id)

    async def apply(self, batch: list[dict[str, Any]]) -> None:
        """Take decoded RideEvents (the tail's handler); a version already seen is a replay."""
        for e in batch:
            self._apply(e)

    def _apply(self, e: dict[str, Any]) -> None:
        ride = self.rides.get(e["ride_id"])
        if ride is not None and e["version"] <= ride["version"]:
            return
        if ride is None:
            ride = self.rides[e["ride_id"]] = {"ride_id": e["ride_id"], "requested_ts": e["ts"], "events": [],
                                               "driver_id": None, "offered_to": None}
        event = e["event"]
        ride.update(
            version=e["version"], state=e["state"], rider_id=e["rider_id"], product=e["product"],
            pickup={"lat": e["pickup_lat"], "lng": e["pickup_lng"]},
            destination={"lat": e["dest_lat"], "lng": e["dest_lng"]}, pickup_cell=e["pickup_cell"],
            fare_estimate=e["fare_estimate"], pickup_eta_s=e["pickup_eta_s"], updated_ts=e["ts"], reason=e["reason"],
        )
        ride["offered_to"] = e["driver_id"] if event == "OFFERED" else None
        if event == "ACCEPTED":
            ride["driver_id"] = e["driver_id"]
        ride["events"] = [*ride["events"][-(EVENTS_KEPT - 1):], {
            "version": e["version"], "event": event, "state": e["state"], "ts": e["ts"], "actor": e["actor"],
            "driver_id": e["driver_id"], "reason": e["reason"]}]
        self._waiters.wake(e["ride_id"])

    async def wait_for(self, ride_id: str, predicate: Predicate, timeout_s: float) -> ViewRide | None:
        """The ride once `predicate` holds for it, or None after timeout_s."""
        def check() -> ViewRide | None:
            ride = self.rides.get(ride_id)
            return ride if ride is not None and predicate(ride) else None
        return await self._waiters.until(ride_id, check, timeout_s)


def _public(ride: ViewRide) -> dict[str, Any]:
    return {k: v for k, v in ride.items() if k != "offered_to"}


def _answered(driver: str, ok_event: str) -> Callable[[ViewRide], bool | None]:
    """Outcome of a driver's answer: True once `ok_event` names the driver, False once its offer is
    gone otherwise (expired, cancelled, someone else assigned), None while undecided (the view may
    not even have seen the offer yet: the driver hears of it before `rides` does)."""

    def outcome(ride: ViewRide) -> bool | None:
        for e in reversed(ride["events"]):
            if e["driver_id"] == driver and e["event"] in (ok_event, "OFFERED", "DECLINED", "EXPIRED", "ACCEPTED"):
                return True if e["event"] == ok_event else None if e["event"] == "OFFERED" else False
            if e["event"] == "ACCEPTED" or e["state"] in FINAL:
                return False
        return None

    return outcome


class RideDesk:
    """What the ride API does: checks against the view, commands to Kafka, outcomes from the view."""

    def __init__(self, settings: Settings, view: RideView) -> None:
        self.settings = settings
        self.view = view
        self.producer: AsyncProducer | None = None  # set while the app runs (gateway.main)
        self.tail: TopicTail[dict[str, Any]] | None = None
        self.command_codec = codec_for(RideCommand)
        self.offer_codec = codec_for(OfferCommand)
        self.timeout_s = settings.ride_reply_timeout_s

    async def start(self, producer: AsyncProducer) -> None:
        self.producer = producer
        codec = codec_for(RideEvent)
        self.tail = TopicTail(self.settings.bootstrap, RIDES.name, lambda _k, v: codec.loads(v), self.view.apply,
                              replay_ms=self.settings.ride_view_replay_ms, client_id=f"{self.settings.app_id}-rides")
        await self.tail.start()

    async def stop(self) -> None:
        if self.tail is not None:
            await self.tail.stop()

    @property
    def ready(self) -> bool:
        return self.tail is not None and self.tail.ready.is_set()

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        assert self.producer is not None, "the ride desk runs with the app"
        group = self.producer.group()
        self.producer.send(group, topic, value, key=key.encode())
        await group.wait()

    async def _command(self, principal: Principal, ride_id: str, command: str, **fields: Any) -> None:
        cmd = {"ride_id": ride_id, "command": command, "ts": now_ms(), "actor": principal.role,
               "actor_id": principal.sub, **fields}
        await self._send(RIDE_COMMANDS.name, ride_id, self.command_codec.dumps(cmd))

    # --- API ---------------------------------------------------------------
    async def request(self, principal: Principal, body: Any, idempotency_key: str | None) -> tuple[int, dict[str, Any]]:
        """Ask for a ride; (201, ride) once the worker has priced it, (202, ride id) if it is slow."""
        if principal.role not in ("rider", "ops"):
            raise Forbidden("only riders (or ops for a rider) request rides")
        fields = parse_ride_request(body, principal)
        ride_id = ride_id_for(fields["rider_id"], idempotency_key)
        if self.view.get(ride_id) is None:
            await self._command(principal, ride_id, "REQUEST", **fields)
        ride = await self.view.wait_for(ride_id, lambda r: True, self.timeout_s)
        if ride is None:
            return 202, {"ride_id": ride_id, "state": "PENDING"}
        return 201, _public(ride)

    async def known(self, principal: Principal, ride_id: str) -> ViewRide:
        """The ride, if this principal may see it (404 unknown, 403 someone else's)."""
        ride = self.view.get(ride_id) or await self.view.wait_for(ride_id, lambda r: True, LAG_GRACE_S)
        if ride is None:
            raise NotFound(f"unknown ride {ride_id!r}")
        if not self._involved(principal, ride):
            raise Forbidden(f"ride {ride_id!r} is not yours")
        return ride

    def _involved(self, principal: Principal, ride: ViewRide) -> bool:
        if principal.role == "ops":
            return True
        if principal.role == "rider":
            return bool(ride["rider_id"] == principal.sub)
        return principal.sub in (ride["driver_id"], ride["offered_to"]) or any(
            e["driver_id"] == principal.sub for e in ride["events"])

    async def get(self, principal: Principal, ride_id: str) -> dict[str, Any]:
        return _public(await self.known(principal, ride_id))

    async def cancel(self, principal: Principal, ride_id: str, reason: str | None) -> tuple[int, dict[str, Any]]:
        ride = await self.known(principal, ride_id)
        if ride["state"] in FINAL:
            raise Conflict(f"ride {ride_id!r} is already {ride['state']}")
        if principal.role == "driver" and ride["driver_id"] != principal.sub:
            raise Forbidden("a driver cancels only a ride assigned to it")
        await self._command(principal, ride_id, "CANCEL", reason=reason)
        return await self._outcome(ride_id, lambda r: r["state"] in FINAL)

    async def by_driver(self, principal: Principal, ride_id: str, command: str) -> tuple[int, dict[str, Any]]:
        """START or COMPLETE, by the ride's assigned driver (or ops)."""
        if principal.role not in ("driver", "ops"):
            raise Forbidden(f"only the ride's driver may {command.lower()} it")
        # This node may not have seen the assignment yet: give its view a moment before judging.
        ride = await self.view.wait_for(ride_id, lambda r: r["state"] not in ("REQUESTED", "OFFERED"),
                                        self.timeout_s) or await self.known(principal, ride_id)
        if principal.role == "driver" and ride["driver_id"] != principal.sub:
            raise Forbidden(f"ride {ride_id!r} is not assigned to you")
        wanted, done = ("ACCEPTED", "ONGOING") if command == "START" else ("ONGOING", "COMPLETED")
        if ride["state"] != wanted:
            raise Conflict(f"{command.lower()} needs state {wanted}; ride {ride_id!r} is {ride['state']}")
        await self._command(principal, ride_id, command)
        return await self._outcome(ride_id, lambda r: r["state"] in (done, *FINAL))

    async def set_status(self, principal: Principal, driver_id: str, status: Any) -> None:
        """The driver goes online, offline or on a break (its app), sent to the desk that owns its state;
        the outcome reaches `driver:{id}` (a driver holding a ride or an order stays as it is: busy)."""
        if not may_publish(principal, driver_id):
            raise Forbidden(f"a {principal.role} token may not set the status of driver {driver_id!r}")
        if status not in DRIVER_STATUS_OPS:
            raise InvalidInput("bad status", [{"field": "status", "reason": "must be online, offline or break"}])
        now = now_ms()
        # attempt = the time: each change is a command of its own (the desk replays a repeated one).
        cmd = offer_command(driver_id, DRIVER_STATUS_OPS[status], driver_id, now, "driver", attempt=now)
        await self._send(OFFERS.name, driver_id, self.offer_codec.dumps(cmd))

    async def decide(self, principal: Principal, ride_id: str, op: str, reason: str | None = None) -> None:
        """A driver's ACCEPT or DECLINE of an offer, to the agent that holds the driver's reservation."""
        if principal.role != "driver":
            raise Forbidden("only the offered driver answers an offer")
        if not ID_RE.fullmatch(ride_id):
            raise InvalidInput("bad ride id", [{"field": "ride_id", "reason": "not a ride id"}])
        cmd = {"driver_id": principal.sub, "op": op, "ride_id": ride_id, "ts": now_ms(), "actor": "driver",
               "reason": reason}
        await self._send(OFFERS.name, principal.sub, self.offer_codec.dumps(cmd))

    async def answer(self, principal: Principal, ride_id: str, op: str) -> tuple[int, dict[str, Any]]:
        """HTTP accept/decline: 200 with the ride once decided for this driver, 409 if the offer was gone."""
        await self.decide(principal, ride_id, op)
        outcome = _answered(principal.sub, "ACCEPTED" if op == "ACCEPT" else "DECLINED")
        ride = await self.view.wait_for(ride_id, lambda r: outcome(r) is not None, self.timeout_s)
        if ride is None:
            return 202, {"ride_id": ride_id, "submitted": op.lower()}
        if not outcome(ride):
            raise Conflict(f"no open offer of ride {ride_id!r} for you (it expired or moved on)")
        return 200, _public(ride)

    async def _outcome(self, ride_id: str, predicate: Predicate) -> tuple[int, dict[str, Any]]:
        ride = await self.view.wait_for(ride_id, predicate, self.timeout_s)
        if ride is None:
            return 202, {"ride_id": ride_id, "submitted": True}
        return 200, _public(ride)
