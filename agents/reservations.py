"""The reservation protocol: what one dispatch command does to one driver, as a table (pure).

A driver is in one *phase* at a time, read off its state at the command's time; a command
names a ride (and an attempt) that the driver's state *matches* or not. `RESERVATIONS` maps
(phase, op, match) to a `Rule`: the effect on the state, the push to `driver:{id}` and the reply
to the ride (a RideCommand on `ride-commands`). `apply_offer` is that table, interpreted; the
README prints it (`livetrack reservations`), and the tests hold every cell of it against a
specification of their own.

Why it makes exactly-once assignment: a driver's state lives in one partition, decided by one
owner (agents.desk), so RESERVE is a check-and-set (only a FREE driver is reserved, and the
reservation names one ride and attempt); ACCEPT turns only the open reservation of that ride
into an assignment; every other answer is a refusal or a no-op that the ride compensates
(RELEASE, FREE) when it has moved on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from agents.commands import ride_command
from agents.estimates import SpeedLookup, constant_speed, travel_time_s
from infra.settings import Settings
from schemas import typed

__all__ = [
    "DRIVER_OPS", "MATCHES", "OPS", "PHASES", "RESERVATIONS", "OfferPolicy", "OfferResult", "Rule", "apply_driver_op",
    "apply_offer", "command_key", "match_of", "phase_of", "placeholder", "unavailable",
]

State = typed.DriverState
Command = typed.OfferCommand

OFFER_PRIORITY = 9  # the highest: an offer is worth nothing after its TTL
RIDE_PRIORITY = 8
NOTICE_TTL_MS = 60_000
ME = "offers"  # actor_id of the answers the desk gives

# Phases of a driver, as a command finds it.
UNKNOWN = "UNKNOWN"  # never seen (no state)
FREE = "FREE"  # holding no ride
RESERVED = "RESERVED"  # an open offer: reserved for a ride until its TTL
LAPSED = "LAPSED"  # a reservation past its TTL, not released yet
ASSIGNED = "ASSIGNED"  # accepted a ride, on the way to the pickup
ON_TRIP = "ON_TRIP"  # the trip has started
PHASES = (UNKNOWN, FREE, RESERVED, LAPSED, ASSIGNED, ON_TRIP)
OPS = ("RESERVE", "RELEASE", "ACCEPT", "DECLINE", "START", "FREE")
# How the command's ride and attempt match what the driver holds.
NONE = "none"  # the driver holds no ride
SAME = "same"  # this ride, this attempt
RIDE = "ride"  # this ride, another attempt
OTHER = "other"  # another ride
MATCHES = (NONE, SAME, RIDE, OTHER)


@dataclass(frozen=True)
class Rule:
    """What a command does: `effect` on the state, the `push` to the driver, the `reply` to the ride."""

    # none | reserve | clear | assign | start | free. `reserve` is the check-and-set: refused "busy"
    # when the driver's status is not AVAILABLE, "offline" when its last ping is too old.
    effect: str = "none"
    push: str | None = None  # offer | offer-again | revoked | assigned | started | ended
    reply: str | None = None  # RESERVED | REFUSED | ASSIGNED | DECLINED
    reason: str | None = None  # the reply's (REFUSED) or the push's (revoked) reason; None: the command's


def _refused(reason: str) -> Rule:
    return Rule(reply="REFUSED", reason=reason)


_REVOKE_LATE = Rule(push="revoked", reason="no open offer for this ride")
_RESERVE = Rule("reserve", "offer", "RESERVED")
_HOLDING = (RESERVED, LAPSED, ASSIGNED, ON_TRIP)


def _table() -> dict[tuple[str, str, str], Rule]:
    t: dict[tuple[str, str, str], Rule] = {}
    t[(UNKNOWN, "RESERVE", NONE)] = _refused("unknown driver")
    t[(FREE, "RESERVE", NONE)] = _RESERVE
    t[(FREE, "ACCEPT", NONE)] = _REVOKE_LATE
    t[(LAPSED, "RESERVE", RIDE)] = t[(LAPSED, "RESERVE", OTHER)] = _RESERVE  # a lapsed reservation holds nothing
    t[(RESERVED, "RESERVE", SAME)] = Rule("none", "offer-again", "RESERVED")  # replayed: same offer, same seq
    t[(LAPSED, "RESERVE", SAME)] = Rule("none", "offer-again", "RESERVED")
    t[(RESERVED, "RESERVE", RIDE)] = _refused("reserved")
    t[(RESERVED, "RESERVE", OTHER)] = _refused("reserved")
    for phase in (ASSIGNED, ON_TRIP):
        for match in (SAME, RIDE, OTHER):
            t[(phase, "RESERVE", match)] = _refused("busy")
    for phase in (RESERVED, LAPSED):
        t[(phase, "RELEASE", SAME)] = Rule("clear", "revoked")
        t[(phase, "DECLINE", SAME)] = t[(phase, "DECLINE", RIDE)] = Rule("clear", "revoked", "DECLINED", "declined")
        t[(phase, "FREE", SAME)] = t[(phase, "FREE", RIDE)] = Rule("free", "ended")
    for match in (SAME, RIDE):
        t[(RESERVED, "ACCEPT", match)] = Rule("assign", "assigned", "ASSIGNED")
        t[(LAPSED, "ACCEPT", match)] = _REVOKE_LATE
        for phase in (ASSIGNED, ON_TRIP):
            t[(phase, "ACCEPT", match)] = Rule(reply="ASSIGNED")  # replayed, or pressed twice: same answer
            t[(phase, "FREE", match)] = Rule("free", "ended")
        t[(ASSIGNED, "START", match)] = Rule("start", "started")
    for phase in _HOLDING:
        t[(phase, "ACCEPT", OTHER)] = _REVOKE_LATE
    return t


# (phase, op, match) -> Rule. A combination not listed changes nothing and says nothing.
RESERVATIONS: dict[tuple[str, str, str], Rule] = _table()
NOTHING = Rule()


@dataclass(frozen=True)
class OfferPolicy:
    """What reservations check, from settings once."""

    driver_max_age_ms: int = 30_000
    h3_resolution: int = 9
    speed: SpeedLookup = field(default=constant_speed(8.0))

    @classmethod
    def from_settings(cls, s: Settings) -> "OfferPolicy":
        return cls(driver_max_age_ms=s.dispatch_driver_max_age_ms, h3_resolution=s.h3_resolution,
                   speed=constant_speed(s.dispatch_speed_mps))


@dataclass
class OfferResult:
    """What one command does to one driver."""

    state: State | None = None  # None: unchanged
    pushes: list[typed.PushMessage] = field(default_factory=list)
    replies: list[typed.RideCommand] = field(default_factory=list)  # answers to the ride
    memberships: list[typed.CellMembership] = field(default_factory=list)
    statuses: list[typed.DriverStatusChanged] = field(default_factory=list)


def phase_of(state: State | None, now_ms: int, policy: OfferPolicy) -> str:
    """The driver's phase at `now_ms`."""
    if state is None:
        return UNKNOWN
    if state["ride_id"]:
        if state["reserved_until"] > now_ms:
            return RESERVED
        if state["reserved_until"] > 0:
            return LAPSED
        return ON_TRIP if state["status"] == "ON_TRIP" else ASSIGNED
    return FREE


def unavailable(state: State, now_ms: int, policy: OfferPolicy) -> str | None:
    """Why a driver holding no ride cannot be reserved now, if it cannot (the check of the check-and-set)."""
    if state["status"] in ("OFFLINE", "ON_BREAK"):
        return "offline"
    if state["status"] != "AVAILABLE" or state["orders"]:
        return "busy"
    if now_ms - state["received_ts"] > policy.driver_max_age_ms:
        return "offline"
    return None


def match_of(state: State | None, cmd: Command) -> str:
    """How the command's ride and attempt match the ride the driver holds."""
    if state is None or not state["ride_id"]:
        return NONE
    if state["ride_id"] != cmd["ride_id"]:
        return OTHER
    return SAME if state["offer_attempt"] == cmd["attempt"] else RIDE


def command_key(cmd: Command) -> str:
    """What makes a command the same command again (a replay, or a driver pressing twice)."""
    return f"{cmd['op']} {cmd['ride_id']} {cmd.get('attempt', 0)}"


class _Apply:
    """One rule carried out on a copy of the driver's state."""

    def __init__(self, prev: State, cmd: Command, policy: OfferPolicy, now_ms: int) -> None:
        self.s: State = prev.copy()
        # The answers name the attempt the driver holds (an ACCEPT from the gateway carries none).
        self.attempt = prev["offer_attempt"] if prev["ride_id"] == cmd["ride_id"] else cmd["attempt"]
        self.cmd = cmd
        self.p = policy
        self.now = now_ms
        self.out = OfferResult()

    def push(self, kind: str, data: Mapping[str, Any], *, priority: int, ttl_ms: int, seq: int | None = None) -> int:
        """A push to `driver:{id}` with the next seq of the driver's one seq source (or `seq`, replayed)."""
        s = self.s
        if seq is None:
            s["push_seq"] = seq = s["push_seq"] + 1
        self.out.pushes.append({
            "channel": f"driver:{s['driver_id']}", "seq": seq, "type": kind, "priority": priority,
            "ttl_ms": ttl_ms, "sent_ts": self.now, "event_ts": self.cmd["ts"],
            "data": json.dumps({"driver_id": s["driver_id"], "ride_id": self.cmd["ride_id"], **data},
                               separators=(",", ":")),
        })
        return seq

    def reply(self, command: str, reason: str | None) -> None:
        s = self.s
        self.out.replies.append(ride_command(
            self.cmd["ride_id"], command, self.now, "system", ME, driver_id=s["driver_id"], attempt=self.attempt,
            lat=s["lat"], lng=s["lng"], reason=reason,
            expires_at=s["reserved_until"] if command == "RESERVED" or reason == "reserved" else 0))

    def status(self, status: str) -> None:
        """Change the driver's status: its cell learns at once (assigned drivers stop being candidates)."""
        s = self.s
        if s["status"] == status:
            return
        s["status"] = status
        self.out.statuses.append({"driver_id": s["driver_id"], "status": status, "ts": self.now})
        if s["cell"]:
            # The driver's own fix time, so ping memberships and this one stay in order in the cell.
            self.out.memberships.append({"cell": s["cell"], "driver_id": s["driver_id"], "op": "REFRESH",
                                         "status": status, "ts": s["fix_ts"]})

    def offer(self, seq: int | None = None) -> int:
        s, c = self.s, self.cmd
        eta = None
        pickup_lat, pickup_lng = c["pickup_lat"], c["pickup_lng"]
        if pickup_lat is not None and pickup_lng is not None:
            eta = round(travel_time_s(s["lat"], s["lng"], pickup_lat, pickup_lng, speed=self.p.speed,
                                      resolution=self.p.h3_resolution), 1)
        return self.push("offer", {
            "attempt": c["attempt"], "expires_at": s["reserved_until"], "ttl_ms": c["ttl_ms"],
            "pickup": {"lat": c["pickup_lat"], "lng": c["pickup_lng"]},
            "destination": {"lat": c["dest_lat"], "lng": c["dest_lng"]},
            "fare_estimate": c["fare_estimate"], "pickup_eta_s": eta,
        }, priority=OFFER_PRIORITY, ttl_ms=c["ttl_ms"], seq=seq)

    def clear(self) -> None:
        self.s["ride_id"], self.s["reserved_until"], self.s["offer_attempt"] = None, 0, 0

    def carry_out(self, rule: Rule) -> OfferResult:
        s, c = self.s, self.cmd
        if rule.effect == "reserve":
            refusal = unavailable(s, self.now, self.p)
            if refusal is not None:
                rule = _refused(refusal)
        _EFFECTS[rule.effect](self)
        if rule.push is not None:
            _PUSHES[rule.push](self, rule.reason or c["reason"])
        if rule.reply == "REFUSED":
            self.reply("REFUSED", rule.reason)
        elif rule.reply == "DECLINED":
            self.reply("DECLINED", c["reason"] or "declined by driver")
        elif rule.reply is not None:
            self.reply(rule.reply, None)
        if rule.effect != "none" or (rule.push is not None and rule.push != "offer-again"):
            self.out.state = s
        return self.out


def _reserve(a: _Apply) -> None:
    a.s["ride_id"], a.s["offer_attempt"] = a.cmd["ride_id"], a.cmd["attempt"]
    a.s["reserved_until"] = a.now + a.cmd["ttl_ms"]
    a.attempt = a.cmd["attempt"]


def _assign(a: _Apply) -> None:
    a.s["reserved_until"] = 0
    a.status("EN_ROUTE")


def _free(a: _Apply) -> None:
    a.clear()
    a.status("AVAILABLE")


_EFFECTS: dict[str, Callable[[_Apply], None]] = {
    "none": lambda a: None, "reserve": _reserve, "clear": _Apply.clear, "assign": _assign,
    "start": lambda a: a.status("ON_TRIP"), "free": _free,
}


def _offer(a: _Apply, _reason: str | None) -> None:
    a.s["offer_seq"] = a.offer()


def _offer_again(a: _Apply, _reason: str | None) -> None:
    a.offer(seq=a.s["offer_seq"])


def _notice(kind: str, **data: Any) -> Callable[[_Apply, str | None], None]:
    def push(a: _Apply, reason: str | None) -> None:
        payload = {"attempt": a.attempt, **data}
        if kind == "offer.revoked" or kind == "ride.ended":
            payload["reason"] = reason
        if kind != "offer.revoked":
            payload["status"] = a.s["status"]
        a.push(kind, payload, priority=OFFER_PRIORITY if kind == "offer.revoked" else RIDE_PRIORITY,
               ttl_ms=NOTICE_TTL_MS)
    return push


_PUSHES: dict[str, Callable[[_Apply, str | None], None]] = {
    "offer": _offer,
    "offer-again": _offer_again,
    "revoked": _notice("offer.revoked"),
    "assigned": _notice("ride.assigned"),
    "started": _notice("ride.started"),
    "ended": _notice("ride.ended"),
}


def apply_offer(prev: State | None, cmd: Command, policy: OfferPolicy, now_ms: int) -> OfferResult:
    """Decide one command against the driver's state (pure): the RESERVATIONS rule it falls under."""
    rule = RESERVATIONS.get((phase_of(prev, now_ms, policy), cmd["op"], match_of(prev, cmd)), NOTHING)
    if prev is None:
        out = OfferResult()
        if rule.reply is not None:  # only a refusal: there is no driver to change or push to
            out.replies.append(ride_command(cmd["ride_id"], rule.reply, now_ms, "system", ME,
                                            driver_id=cmd["driver_id"], attempt=cmd["attempt"], reason=rule.reason))
        return out
    return _Apply(prev, cmd, policy, now_ms).carry_out(rule)


# Outside the reservation protocol: the driver's own status from its app, and the orders it
# carries as a courier (from the orders agent). Neither touches a reservation or a ride.
STATUS_OPS = {"ONLINE": "AVAILABLE", "OFFLINE": "OFFLINE", "BREAK": "ON_BREAK"}
DRIVER_OPS = frozenset({*STATUS_OPS, "CARRY", "DROP"})
CARRIED_MAX = 16  # orders one courier carries at once, at most (the oldest is dropped)


def placeholder(driver_id: str) -> State:
    """The state of a driver a command names before its first ping: no position yet (fix_ts 0)."""
    return {
        "driver_id": driver_id, "seq": 0, "lat": 0.0, "lng": 0.0, "fix_ts": 0, "received_ts": 0, "cell": "",
        "status": "AVAILABLE", "push_seq": 0, "pushed_lat": 0.0, "pushed_lng": 0.0, "pushed_ts": 0,
        "membership_ts": 0, "speed": None, "bearing": None, "accuracy": None, "ride_id": None, "offer_attempt": 0,
        "reserved_until": 0, "offer_seq": 0, "orders": [],
    }


def apply_driver_op(prev: State | None, cmd: Command, policy: OfferPolicy, now_ms: int) -> OfferResult:
    """ONLINE, OFFLINE, BREAK (the driver's app) or CARRY, DROP (the orders agent) (pure).

    A status change is refused ("busy": pushed to the driver, state unchanged) while the driver holds
    a ride or carries an order; a courier carrying orders is EN_ROUTE, and AVAILABLE again once the
    last is dropped (unless it went offline or on a break meanwhile)."""
    op = cmd["op"]
    a = _Apply(prev or placeholder(cmd["driver_id"]), cmd, policy, now_ms)
    s = a.s
    if op in STATUS_OPS:
        if s["ride_id"] or s["orders"]:
            a.push("driver.status", {"status": s["status"], "refused": STATUS_OPS[op], "reason": "busy"},
                   priority=RIDE_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        else:
            a.status(STATUS_OPS[op])
            a.push("driver.status", {"status": s["status"]}, priority=RIDE_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        a.out.state = s
        return a.out
    order = cmd["ride_id"]
    carried = [o for o in s["orders"] if o != order]
    if op == "CARRY":
        carried = [*carried, order][-CARRIED_MAX:]
    if carried == s["orders"]:
        return a.out  # already so: a replayed command
    s["orders"] = carried
    if carried and s["status"] == "AVAILABLE":
        a.status("EN_ROUTE")
    elif not carried and not s["ride_id"] and s["status"] == "EN_ROUTE":
        a.status("AVAILABLE")
    a.push("order.carried" if op == "CARRY" else "order.dropped", {"orders": carried, "status": s["status"]},
           priority=RIDE_PRIORITY, ttl_ms=NOTICE_TTL_MS)
    a.out.state = s
    return a.out


_EFFECT_WORDS = {"none": "", "reserve": "reserve", "clear": "clear", "assign": "assign", "start": "start trip",
                 "free": "free"}


def as_markdown() -> str:
    """RESERVATIONS as a Markdown table: a row per phase and match, a column per command; each cell
    says effect · push · reply (blank: nothing happens). `livetrack reservations` prints it."""
    rows = [(phase, match) for phase in PHASES
            for match in ((NONE,) if phase in (UNKNOWN, FREE) else (SAME, RIDE, OTHER))]
    lines = ["| driver is | command names | " + " | ".join(OPS) + " |", "|---|---|" + "---|" * len(OPS)]
    for phase, match in rows:
        cells = []
        for op in OPS:
            rule = RESERVATIONS.get((phase, op, match))
            if rule is None:
                cells.append("")
                continue
            reply = f"{rule.reply} ({rule.reason})" if rule.reply == "REFUSED" else rule.reply
            parts = [_EFFECT_WORDS[rule.effect], rule.push or "", reply or ""]
            cells.append(" · ".join(p for p in parts if p))
        label = {NONE: "-", SAME: "its ride, attempt", RIDE: "its ride, other attempt", OTHER: "another ride"}[match]
        lines.append(f"| {phase} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
