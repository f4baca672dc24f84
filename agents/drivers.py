"""Drivers agent (topic `locations`, partitioned by driver): accept a ping or say why not.

Its batches come through `agents.feed.BatchFeed`, not a Faust agent: Faust handed the records over
one at a time and fell ~1.4 s behind the log at 1,000 pings/s with the agent idle half the time
(README, Benchmarks, stop 13).

`apply_ping` is pure: previous state + ping -> new state, the push message
(when the move is significant) and cell-membership changes. Values are the
decoded Avro dicts of the Records in `schemas.records` (a LocationEvent, a
DriverState, ...): building Faust Records here cost ~50 us a ping.
"""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import faust

from agents.activity import ActivityFanout
from agents.batching import AGENT_ERRORS, DeadLetters, bind_event, decode_records
from agents.geo import cell_of, haversine_m
from infra.producer import AsyncProducer, DeliveryGroup
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellMembershipBatch, LocationBatch, LocationEvent, PushMessage, RideCommand
from schemas.topics import DRIVER_CELLS, PUSH, RIDE_COMMANDS
from schemas.validation import range_errors
from tables.writer import TableWriter

__all__ = [
    "ACCEPTED", "DUPLICATE", "STALE", "JUMP", "INVALID",
    "DriverKeyedAgent", "DriverPolicy", "DriversAgent", "PingResult", "apply_ping", "location_data",
]

log = logging.getLogger(__name__)

ACCEPTED, DUPLICATE, STALE, JUMP, INVALID = "accepted", "duplicate", "stale", "jump", "invalid"
# A fix refused only because a newer one was applied is still a true sighting of the driver; sending
# these again is also what makes a batch replayed after a crash re-send its sightings (features dedup).
SIGHTED = (ACCEPTED, DUPLICATE, STALE)
LOCATION_PRIORITY = 3  # 0 = lowest, 9 = highest; offers and status changes rank above moves
Ping = Mapping[str, Any]  # a decoded LocationEvent
State = dict[str, Any]  # a decoded DriverState
Message = dict[str, Any]  # a PushMessage or CellMembership to encode


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
    push: Message | None = None
    memberships: tuple[Message, ...] = ()
    ride_move: Message | None = None  # a RideCommand DRIVER_MOVED: the driver's ride learns of the move


def driver_channel(driver_id: str) -> str:
    return f"driver:{driver_id}"


def _is_jump(prev: State, ev: Ping, policy: DriverPolicy) -> bool:
    dt_s = max(0.0, (ev["fix_ts"] - prev["fix_ts"]) / 1000.0)
    allowed = policy.max_speed_mps * dt_s + policy.jump_slack_m
    return haversine_m(prev["lat"], prev["lng"], ev["lat"], ev["lng"]) > allowed


def _verdict(prev: State | None, ev: Ping, policy: DriverPolicy) -> str:
    if prev is None:
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


def location_data(state: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of a driver: snapshot, GET body and push payload."""
    return {
        "driver_id": state["driver_id"], "lat": state["lat"], "lng": state["lng"], "seq": state["seq"],
        "ts": state["fix_ts"], "speed": state["speed"], "bearing": state["bearing"],
        "accuracy": state["accuracy"], "status": state["status"], "cell": state["cell"],
    }


def _location_push(state: State, ev: Ping, policy: DriverPolicy, now_ms: int) -> Message:
    return {
        "channel": driver_channel(state["driver_id"]), "seq": state["push_seq"], "type": "driver.location",
        "priority": LOCATION_PRIORITY, "ttl_ms": policy.push_ttl_ms, "sent_ts": now_ms,
        "event_ts": ev["received_ts"], "data": json.dumps(location_data(state), separators=(",", ":")),
    }


def _membership(cell: str, ev: Ping, op: str, status: str) -> Message:
    return {"cell": cell, "driver_id": ev["driver_id"], "op": op, "status": status, "ts": ev["fix_ts"]}


def _memberships(prev: State | None, cell: str, status: str, ev: Ping, policy: DriverPolicy) -> tuple[Message, ...]:
    if prev is None or not prev["cell"]:
        return (_membership(cell, ev, "JOIN", status),)
    if prev["cell"] != cell:
        return (_membership(prev["cell"], ev, "LEAVE", status), _membership(cell, ev, "JOIN", status))
    if ev["fix_ts"] - prev["membership_ts"] >= policy.membership_refresh_ms:
        return (_membership(cell, ev, "REFRESH", status),)
    return ()


# Decided by the offers agent (agents/offers.py) on this same record; a ping carries them over.
DISPATCH_FIELDS = {"ride_id": None, "offer_attempt": 0, "reserved_until": 0, "offer_seq": 0, "outbox_of": None,
                   "outbox": []}  # never mutated in place: each decision sets a new list


def _ride_move(state: State, ev: Ping) -> Message | None:
    """The assigned driver's significant move, for its ride (ETA and the rider's map)."""
    if not state["ride_id"] or state["reserved_until"]:
        return None
    return {"ride_id": state["ride_id"], "command": "DRIVER_MOVED", "ts": ev["received_ts"], "actor": "driver",
            "actor_id": state["driver_id"], "driver_id": state["driver_id"], "lat": state["lat"],
            "lng": state["lng"]}


def _replayed(prev: State, ev: Ping, policy: DriverPolicy, now_ms: int, may_push: bool) -> PingResult:
    """The ping that made the current state, seen again (a device retry, or a batch replayed
    after a crash before its outputs were acked): send its outputs again. Same seq, so
    the gateway and the cells agent drop what they already have."""
    push = _location_push(prev, ev, policy, now_ms) if may_push and prev["pushed_ts"] == ev["fix_ts"] else None
    joins = (_membership(prev["cell"], ev, "JOIN", prev["status"]),) if prev["membership_ts"] == ev["fix_ts"] else ()
    return PingResult(DUPLICATE, None, push, joins)


def apply_ping(prev: State | None, ev: Ping, policy: DriverPolicy, now_ms: int, *, may_push: bool = True) -> PingResult:
    """Decide one ping against the driver's previous state (pure). `may_push` False: the move is
    kept but not pushed now (another `driver:{id}` push is still on its way out; see DriversAgent)."""
    verdict = _verdict(prev, ev, policy)
    if verdict == DUPLICATE and prev is not None:
        return _replayed(prev, ev, policy, now_ms, may_push)
    if verdict != ACCEPTED:
        return PingResult(verdict)
    cell = cell_of(ev["lat"], ev["lng"], policy.h3_resolution)
    status = prev["status"] if prev is not None else "AVAILABLE"
    memberships = _memberships(prev, cell, status, ev, policy)
    significant = may_push and _significant(prev, ev, policy)
    base = prev if prev is not None and not significant else None
    state: State = {
        "driver_id": ev["driver_id"], "seq": ev["seq"], "lat": ev["lat"], "lng": ev["lng"],
        "fix_ts": ev["fix_ts"], "received_ts": ev["received_ts"], "cell": cell, "status": status,
        "push_seq": (prev["push_seq"] if prev else 0) + (1 if significant else 0),
        "pushed_lat": base["pushed_lat"] if base else ev["lat"],
        "pushed_lng": base["pushed_lng"] if base else ev["lng"],
        "pushed_ts": base["pushed_ts"] if base else ev["fix_ts"],
        "membership_ts": ev["fix_ts"] if memberships or prev is None else prev["membership_ts"],
        "speed": ev.get("speed"), "bearing": ev.get("bearing"), "accuracy": ev.get("accuracy"),
        **{k: prev.get(k, default) if prev else default for k, default in DISPATCH_FIELDS.items()},
    }
    push = _location_push(state, ev, policy, now_ms) if significant else None
    move = _ride_move(state, ev) if significant else None
    return PingResult(ACCEPTED, state, push, memberships, move)


class DriverKeyedAgent:
    """What the agents on driver-keyed topics share: the driver's state, where its cells go, a clock."""

    def __init__(
        self, *, states: TableWriter, producer: AsyncProducer, dead_letters: DeadLetters,
        policy: Any, partitions: int, cell_partitions: int, clock_ms: Callable[[], int],
    ) -> None:
        self.states = states
        self.producer = producer
        self.dead_letters = dead_letters
        self.policy = policy
        self.partitions = partitions
        self.cell_partitions = cell_partitions
        self.clock_ms = clock_ms
        self.cells_codec = codec_for(CellMembershipBatch)

    def cell_partition(self, cell: str) -> int:
        """The `driver-cells` partition of a membership in `cell` (the cells agent's, by cell)."""
        return partition_for(cell, self.cell_partitions)

    def send_memberships(self, group: DeliveryGroup, memberships: Iterable[Message]) -> None:
        """Cell memberships to `driver-cells`: one CellMembershipBatch per partition of their cells."""
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in memberships:
            by_partition[self.cell_partition(m["cell"])].append(m)
        for partition, changes in by_partition.items():
            self.producer.send(group, DRIVER_CELLS.name, self.cells_codec.dumps({"changes": changes}),
                               partition=partition)


class DriversAgent(DriverKeyedAgent):
    """Applies LocationBatch records: state to `driver_to_state`, pushes and memberships out."""

    def __init__(self, *, activity: ActivityFanout | None = None,
                 dispatching: Callable[[str], bool] = lambda _driver: False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activity = activity  # sightings for the features agent
        # Drivers with a dispatch decision whose records are not sent yet (OffersAgent.is_unsent): that
        # decision took the next `driver:{id}` seq and goes out once its state is acked, so a location
        # push sent now would reach the channel first with a higher seq, and the gateway and clients
        # would then drop the decision's push (an offer) as old. Their moves wait for a later ping.
        self.dispatching = dispatching
        self.push_codec = codec_for(PushMessage)
        self.ping_codec = codec_for(LocationEvent)
        self.ride_codec = codec_for(RideCommand)
        self.verdicts: Counter[str] = Counter()

    async def process(self, events: Sequence[faust.EventT]) -> None:
        """Apply a batch of records; return once every output is acked by Kafka."""
        group = self.producer.group()
        memberships: list[Message] = []
        for event, batch in decode_records(events, LocationBatch, self.dead_letters, group):
            bind_event(event)  # table reads and writes go to this event's partition
            for ping in batch["events"]:
                try:
                    self._apply(group, event, ping, memberships)
                except AGENT_ERRORS as exc:  # one bad ping never stops the agent
                    self._reject(group, event, ping, f"bad ping: {type(exc).__name__}: {exc}")
        bind_event(None)
        self.states.flush(group)
        self.send_memberships(group, memberships)
        if self.activity is not None:
            self.activity.send(group)
        await group.wait()
        if self.activity is not None:
            self.activity.delivered()
        self.states.persist_offsets(group)

    def _reject(self, group: DeliveryGroup, event: faust.EventT, ping: Ping, reason: str) -> None:
        self.dead_letters.send(group, event, reason, self.ping_codec.dumps(dict(ping)))

    def _refusal(self, event: faust.EventT, ping: Ping) -> str | None:
        """Why a ping cannot be applied here, if it cannot (a producer that skipped the gateway)."""
        if partition_for(ping["driver_id"], self.partitions) != event.message.partition:
            return "driver hashes to another partition"
        errors = range_errors(LocationEvent, ping)
        return "; ".join(f"{e.field} {e.reason}" for e in errors) or None

    def _apply(self, group: DeliveryGroup, event: faust.EventT, ping: Ping,
               memberships: list[Message]) -> None:
        refusal = self._refusal(event, ping)
        if refusal:
            self.verdicts[INVALID] += 1
            self._reject(group, event, ping, refusal)
            return
        prev = self.states.get(ping["driver_id"])
        result = apply_ping(prev, ping, self.policy, self.clock_ms(), may_push=not self.dispatching(ping["driver_id"]))
        self.verdicts[result.verdict] += 1
        seen = result.state or prev
        if self.activity is not None and result.verdict in SIGHTED and seen is not None:
            self.activity.sighting(ping, seen["status"])
        if result.verdict == JUMP:
            self._reject(group, event, ping, f"impossible jump (> {self.policy.max_speed_mps} m/s)")
        if result.state is not None:
            self.states.set(ping["driver_id"], result.state, event)
        if result.push is not None:
            push = result.push
            self.producer.send(group, PUSH.name, self.push_codec.dumps(push), key=push["channel"].encode())
        if result.ride_move is not None:
            move = result.ride_move
            self.producer.send(group, RIDE_COMMANDS.name, self.ride_codec.dumps(move), key=move["ride_id"].encode())
        memberships.extend(result.memberships)
