"""Offers agent (topic `offers`, partitioned by driver like `locations`): reservations and assignments.

`apply_offer` is pure: a driver's state + one OfferCommand -> the state after it, the pushes to
`driver:{id}`, the answers to the ride (RideCommands), a cell-membership refresh and a
DriverStatusChanged when the driver's status changes.

Why here: `offers` is co-partitioned with `locations`, so this agent runs in the worker that owns
the driver's `driver_to_state` and shares its write-through TableWriter with the drivers agent.
Both agents run on one event loop and read-modify-write a driver's state without an await in
between, so a reservation's check-and-set is atomic without a lock, and an offer takes the next
`driver:{id}` seq from the same `push_seq` the location pushes use: one seq source per channel.
The rides agent, on the same loop, hands it the commands for drivers this worker holds directly
(`OffersAgent.apply_in_place`) instead of through the topic: the same decision, one hop less.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import faust

from agents.batching import bind_event, decode_records
from agents.drivers import DriverKeyedAgent, driver_channel
from agents.estimates import SpeedLookup, constant_speed, travel_time_s
from infra.producer import DeliveryGroup
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import DriverStatusChanged, OfferCommand, PushMessage, RideCommand
from schemas.topics import DRIVER_CELLS, DRIVER_STATUS, OFFERS, PUSH, RIDE_COMMANDS

__all__ = ["Decided", "OfferPolicy", "OfferResult", "OffersAgent", "apply_offer", "command_key", "one_per_driver"]

log = logging.getLogger(__name__)

State = dict[str, Any]  # a decoded DriverState
Command = Mapping[str, Any]  # a decoded OfferCommand
Message = dict[str, Any]
OFFER_PRIORITY = 9  # the highest: an offer is worth nothing after its TTL
RIDE_PRIORITY = 8
NOTICE_TTL_MS = 60_000
ME = "offers"  # actor_id of the answers this agent gives


@dataclass(frozen=True)
class OfferPolicy:
    """What the offers agent checks, from settings once."""

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
    pushes: list[Message] = field(default_factory=list)
    replies: list[Message] = field(default_factory=list)
    memberships: list[Message] = field(default_factory=list)
    statuses: list[Message] = field(default_factory=list)


def _holds(state: State | None, ride_id: str) -> bool:
    return state is not None and state.get("ride_id") == ride_id


def reserved(state: State, now_ms: int) -> bool:
    """The driver has an open offer (a reservation not yet past its TTL)."""
    return bool(state.get("ride_id")) and state.get("reserved_until", 0) > now_ms


def assigned(state: State) -> bool:
    return bool(state.get("ride_id")) and state.get("reserved_until", 0) == 0


class _Apply:
    def __init__(self, prev: State | None, cmd: Command, policy: OfferPolicy, now_ms: int) -> None:
        self.prev = prev
        self.s: State = dict(prev) if prev is not None else {}
        self.cmd = cmd
        self.p = policy
        self.now = now_ms
        self.out = OfferResult()

    def done(self, changed: bool = True) -> OfferResult:
        if changed:
            self.out.state = self.s
        return self.out

    def reply(self, command: str, *, reason: str | None = None, expires_at: int = 0) -> None:
        s, c = self.s, self.cmd
        self.out.replies.append({
            "ride_id": c["ride_id"], "command": command, "ts": self.now, "actor": "system", "actor_id": ME,
            "driver_id": c["driver_id"], "attempt": c["attempt"], "lat": s.get("lat"), "lng": s.get("lng"),
            "expires_at": expires_at, "reason": reason,
        })

    def push(self, kind: str, data: Mapping[str, Any], *, priority: int, ttl_ms: int, seq: int | None = None) -> int:
        """A push to `driver:{id}` with the next seq of the driver's one seq source (or `seq`, replayed)."""
        s = self.s
        if seq is None:
            s["push_seq"] = seq = s["push_seq"] + 1
        self.out.pushes.append({
            "channel": driver_channel(s["driver_id"]), "seq": seq, "type": kind, "priority": priority,
            "ttl_ms": ttl_ms, "sent_ts": self.now, "event_ts": self.cmd["ts"],
            "data": json.dumps({"driver_id": s["driver_id"], "ride_id": self.cmd["ride_id"], **data},
                               separators=(",", ":")),
        })
        return seq

    def status(self, status: str) -> None:
        """Change the driver's status: its cell learns at once (assigned drivers stop being candidates)."""
        s = self.s
        if s["status"] == status:
            return
        s["status"] = status
        self.out.statuses.append({"driver_id": s["driver_id"], "status": status, "ts": self.now})
        if s.get("cell"):
            # The driver's own fix time, so ping memberships and this one stay in order in the cell.
            self.out.memberships.append({"cell": s["cell"], "driver_id": s["driver_id"], "op": "REFRESH",
                                         "status": status, "ts": s["fix_ts"]})

    def offer_push(self, seq: int | None = None) -> int:
        s, c = self.s, self.cmd
        eta = None
        if c.get("pickup_lat") is not None:
            eta = round(travel_time_s(s["lat"], s["lng"], c["pickup_lat"], c["pickup_lng"], speed=self.p.speed,
                                      resolution=self.p.h3_resolution), 1)
        return self.push("offer", {
            "attempt": c["attempt"], "expires_at": s["reserved_until"], "ttl_ms": c["ttl_ms"],
            "pickup": {"lat": c["pickup_lat"], "lng": c["pickup_lng"]},
            "destination": {"lat": c["dest_lat"], "lng": c["dest_lng"]},
            "fare_estimate": c.get("fare_estimate"), "pickup_eta_s": eta,
        }, priority=OFFER_PRIORITY, ttl_ms=c["ttl_ms"], seq=seq)

    # --- commands ----------------------------------------------------------
    def reserve(self) -> OfferResult:
        s, c = self.s, self.cmd
        if self.prev is None:
            self.reply("REFUSED", reason="unknown driver")
            return self.done(False)
        if _holds(s, c["ride_id"]) and s.get("offer_attempt") == c["attempt"] and s.get("reserved_until", 0) > 0:
            # Replayed after a crash: the same offer again, same seq (the gateway drops what it has).
            self.offer_push(seq=s["offer_seq"])
            self.reply("RESERVED", expires_at=s["reserved_until"])
            return self.done()  # written again: in the changelog before it is re-sent
        refusal = self.refusal()
        if refusal:
            # Until when it is held, so the rides agent skips it for other rides meanwhile.
            self.reply("REFUSED", reason=refusal, expires_at=s.get("reserved_until", 0) if refusal == "reserved" else 0)
            return self.done(False)
        s.update(ride_id=c["ride_id"], offer_attempt=c["attempt"], reserved_until=self.now + c["ttl_ms"])
        s["offer_seq"] = self.offer_push()
        self.reply("RESERVED", expires_at=s["reserved_until"])
        return self.done()

    def refusal(self) -> str | None:
        """Why this driver cannot be reserved now: the check of the check-and-set."""
        s = self.s
        if assigned(s) or s["status"] != "AVAILABLE":
            return "busy"
        if reserved(s, self.now):
            return "reserved"
        if self.now - s["received_ts"] > self.p.driver_max_age_ms:
            return "offline"
        return None

    def release(self) -> OfferResult:
        s, c = self.s, self.cmd
        if not (_holds(s, c["ride_id"]) and s.get("reserved_until", 0) > 0 and s.get("offer_attempt") == c["attempt"]):
            return self.done(False)  # not this offer's reservation (already gone, or a newer one)
        self.clear()
        self.push("offer.revoked", {"attempt": c["attempt"], "reason": c.get("reason")},
                  priority=OFFER_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        return self.done()

    def accept(self) -> OfferResult:
        s, c = self.s, self.cmd
        if _holds(s, c["ride_id"]) and assigned(s):
            self.reply("ASSIGNED")  # replayed, or the driver pressed twice
            return self.done()  # written again: in the changelog before it is re-sent
        if not (_holds(s, c["ride_id"]) and reserved(s, self.now)):
            self.push("offer.revoked", {"attempt": c["attempt"], "reason": "no open offer for this ride"},
                      priority=OFFER_PRIORITY, ttl_ms=NOTICE_TTL_MS)
            return self.done()
        self.cmd = {**c, "attempt": s["offer_attempt"]}  # the answer names the offer it accepts
        s["reserved_until"] = 0
        self.status("EN_ROUTE")
        self.push("ride.assigned", {"attempt": s["offer_attempt"], "status": "EN_ROUTE"},
                  priority=RIDE_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        self.reply("ASSIGNED")
        return self.done()

    def decline(self) -> OfferResult:
        s, c = self.s, self.cmd
        if not (_holds(s, c["ride_id"]) and s.get("reserved_until", 0) > 0):
            return self.done(False)
        self.cmd = {**c, "attempt": s["offer_attempt"]}
        self.clear()
        # Said on the channel too, so the driver's other devices close the offer.
        self.push("offer.revoked", {"attempt": self.cmd["attempt"], "reason": "declined"},
                  priority=OFFER_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        self.reply("DECLINED", reason=c.get("reason") or "declined by driver")
        return self.done()

    def start(self) -> OfferResult:
        if not (_holds(self.s, self.cmd["ride_id"]) and assigned(self.s)) or self.s["status"] == "ON_TRIP":
            return self.done(False)
        self.status("ON_TRIP")
        self.push("ride.started", {"status": "ON_TRIP"}, priority=RIDE_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        return self.done()

    def free(self) -> OfferResult:
        if not _holds(self.s, self.cmd["ride_id"]):
            return self.done(False)
        self.clear()
        self.status("AVAILABLE")
        self.push("ride.ended", {"reason": self.cmd.get("reason"), "status": "AVAILABLE"},
                  priority=RIDE_PRIORITY, ttl_ms=NOTICE_TTL_MS)
        return self.done()

    def clear(self) -> None:
        self.s.update(ride_id=None, reserved_until=0, offer_attempt=0)


def command_key(cmd: Command) -> str:
    """What makes a command the same command again (a replay, or a driver pressing twice)."""
    return f"{cmd['op']} {cmd['ride_id']} {cmd.get('attempt', 0)}"


@dataclass(frozen=True)
class Decided:
    """One command applied to one driver: whether its state was written, and the records to send."""

    driver_id: str
    changed: bool
    records: list[Message]


def one_per_driver(items: Sequence[tuple[faust.EventT, Command]]
                   ) -> tuple[list[tuple[faust.EventT, Command]], list[tuple[faust.EventT, Command]]]:
    """The longest first run of commands with no driver twice, and the rest."""
    seen: set[str] = set()
    for i, (_event, cmd) in enumerate(items):
        if cmd["driver_id"] in seen:
            return list(items[:i]), list(items[i:])
        seen.add(cmd["driver_id"])
    return list(items), []


_HANDLERS: dict[str, Callable[[_Apply], OfferResult]] = {
    "RESERVE": _Apply.reserve, "RELEASE": _Apply.release, "ACCEPT": _Apply.accept, "DECLINE": _Apply.decline,
    "START": _Apply.start, "FREE": _Apply.free,
}


def apply_offer(prev: State | None, cmd: Command, policy: OfferPolicy, now_ms: int) -> OfferResult:
    """Decide one command against the driver's state (pure)."""
    if prev is None and cmd["op"] != "RESERVE":
        return OfferResult()
    return _HANDLERS[cmd["op"]](_Apply(prev, cmd, policy, now_ms))


class OffersAgent(DriverKeyedAgent):
    """Applies OfferCommand records to `driver_to_state`, with the drivers agent's TableWriter.

    Commands come from the `offers` topic (`process`) or, for a driver whose partition this worker
    holds, from the rides agent in the same process (`apply_in_place`): see that method.
    """

    def __init__(self, *, owned: Callable[[], Collection[int]], event_for: Callable[[int], faust.EventT],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.codecs = {name: codec_for(r) for name, r in (
            ("push", PushMessage), ("reply", RideCommand), ("status", DriverStatusChanged), ("offer", OfferCommand))}
        self.ops: Counter[str] = Counter()
        self.owned = owned  # the driver partitions this worker holds now (agents.feed.Assignment)
        self.event_for = event_for  # an event of a driver partition, for commands decided in place (table routing)
        self.in_place = 0
        # Drivers changed by the step of `process` under way (one at a time: the feed runs its batches
        # in turn), or in place by the rides agent's batch under way, whose records are not acked yet.
        self.unsent: set[str] = set()
        # Drivers whose step failed (Kafka) and is to be tried again: their pushes are still not out.
        self.failed: set[str] = set()
        self._released = asyncio.Event()  # set (and replaced) whenever drivers leave `unsent`

    async def process(self, events: Sequence[faust.EventT]) -> None:
        """Apply a batch of commands: the drivers' new state acked first, then what it sends.

        A reply or push seen before its state is durable could outlive a crash that loses the
        state (an ASSIGNED for a driver whose recovered state is merely reserved, then reserved
        again for another ride). State first, so a replayed command finds the decision already
        taken and re-sends what it sent (the driver's outbox, `decide`).

        The outbox holds the driver's last decision only, so a driver changes at most once per
        step: with two, a crash between their ack and their sends would lose the first one's
        records. A driver's second command in a batch starts the next step.
        """
        group = self.producer.group()
        todo = list(decode_records(events, OfferCommand, self.dead_letters, group))
        while True:
            step, todo = one_per_driver(todo)
            await self._step(step, group)
            if not todo:
                return
            group = self.producer.group()

    async def _step(self, step: Sequence[tuple[faust.EventT, Command]], group: DeliveryGroup) -> None:
        await self.settled([cmd["driver_id"] for _event, cmd in step])
        results: list[Decided] = []
        for event, cmd in step:
            with self.dead_letters.guard(group, event, f"bad {cmd.get('op')} offer command"):
                if partition_for(cmd["driver_id"], self.partitions) != event.message.partition:
                    raise ValueError("driver hashes to another partition")
                results.append(self.decide(cmd, event))
        bind_event(None)
        self.states.flush(group)
        with self.unsent_until_done([d.driver_id for d in results if d.changed]):
            await group.wait()
            self.states.persist_offsets(group)
            out = self.producer.group()
            self.send_results(out, results)
            await out.wait()

    @contextmanager
    def unsent_until_done(self, drivers: Sequence[str]) -> Iterator[None]:
        """These drivers changed and what that sends is not acked yet: the rides agent leaves them to
        this agent's next batch (through `offers`) instead of changing them again in place meanwhile."""
        self.unsent.update(drivers)
        sent = False
        try:
            yield
            sent = True
        finally:
            self.unsent.difference_update(drivers)
            # Failed: the feed tries the batch again, which re-sends the same records (the outboxes).
            (self.failed.difference_update if sent else self.failed.update)(drivers)
            if drivers:
                self._released.set()
                self._released = asyncio.Event()

    def is_unsent(self, driver: str) -> bool:
        """Whether the driver's last dispatch change took a push seq that is not sent yet (for the
        drivers agent, which must not push past it)."""
        return driver in self.unsent or driver in self.failed

    def forget(self) -> None:
        """Partitions moved: a failed batch is read again from its committed offsets, by whoever owns it now."""
        self.failed.clear()

    async def settled(self, drivers: Collection[str]) -> None:
        """Wait until none of `drivers` has a change unsent. Only the rides agent's in-place batch can
        hold one here (this agent's steps run one at a time); deciding meanwhile would take the
        driver's next push seq and could send it before that batch sends the seq before it."""
        while not self.unsent.isdisjoint(drivers):
            await self._released.wait()

    def decide(self, cmd: Command, event: faust.EventT) -> Decided:
        """Read, decide, write with no await in between: atomic against the drivers agent and the
        other source of commands. `event` is one of the driver's partition (table routing).

        What a decision sends is kept on the driver's state (its outbox) with the command's key, so
        that a replay of that command after a crash re-sends exactly those records, even once the
        state no longer shows the change (a FREE's `ride.ended` after the driver was asked again).
        """
        bind_event(event)
        driver, key = cmd["driver_id"], command_key(cmd)
        prev = self.states.get(driver)
        if prev is not None and prev.get("outbox_of") == key:
            # Written again: after a crash the local store may be ahead of the changelog.
            self.states.set(driver, prev, event)
            self.ops["replayed"] += 1
            return Decided(driver, True, list(prev["outbox"]))
        result = apply_offer(prev, cmd, self.policy, self.clock_ms())
        records = self._encode(result)
        if result.state is not None:
            result.state.update(outbox_of=key, outbox=records)
            self.states.set(driver, result.state, event)
        self.ops[cmd["op"]] += 1
        return Decided(driver, result.state is not None, records)

    def takes_in_place(self, topic: str, key: str) -> bool:
        """Whether a record the rides agent would send to `offers` can be applied here instead: a
        driver held here with nothing of this agent's still unsent."""
        return (topic == OFFERS.name and key not in self.unsent
                and partition_for(key, self.partitions) in self.owned())

    def apply_in_place(self, records: Sequence[tuple[bytes, faust.EventT]], group: DeliveryGroup) -> list[Decided]:
        """Apply OfferCommand records (value, the ride command that decided it) for drivers held here.

        Why: the rides and offers agents run in one worker, which holds both a ride's partition and
        (with one worker, always; with more, for 1/n of the drivers) the driver's. Sending the
        RESERVE through `offers` cost a produce, a fetch and a batch (~50 ms p50 at 50 rides/s,
        `make bench-dispatch`). Still one writer per driver: this worker owns the partition (the
        feed changes its assignment only between batches) and the check-and-set has no await.
        The caller flushes `states` in the group of its own state and sends the results only once
        both are acked, the order `process` keeps; a crash in between replays the ride command,
        whose outbox re-sends the record, and the driver's outbox answers it as the first time.
        """
        results: list[Decided] = []
        for value, origin in records:
            with self.dead_letters.guard(group, origin, "bad in-place offer command", value):
                cmd = self.codecs["offer"].loads(value)
                results.append(self.decide(cmd, self.event_for(partition_for(cmd["driver_id"], self.partitions))))
                self.in_place += 1
        bind_event(None)
        return results

    def send_results(self, group: DeliveryGroup, results: Sequence[Decided]) -> None:
        """What the commands decided: pushes, answers to the rides, status changes, cell refreshes."""
        for decided in results:
            for r in decided.records:
                if r["topic"] == DRIVER_CELLS.name:  # by the cell's partition, as every membership
                    self.producer.send(group, r["topic"], r["value"], partition=self.cell_partition(r["key"]))
                else:
                    self.producer.send(group, r["topic"], r["value"], key=r["key"].encode())

    def _encode(self, result: OfferResult) -> list[Message]:
        """A decision's records as Outgoing dicts (topic, key, Avro value); a membership keyed by its cell."""
        c = self.codecs
        return [
            *({"topic": PUSH.name, "key": p["channel"], "value": c["push"].dumps(p)} for p in result.pushes),
            *({"topic": RIDE_COMMANDS.name, "key": r["ride_id"], "value": c["reply"].dumps(r)}
              for r in result.replies),
            *({"topic": DRIVER_STATUS.name, "key": st["driver_id"], "value": c["status"].dumps(st)}
              for st in result.statuses),
            *({"topic": DRIVER_CELLS.name, "key": m["cell"], "value": self.cells_codec.dumps({"changes": [m]})}
              for m in result.memberships),
        ]
