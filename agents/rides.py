"""Rides agent (topic `ride-commands`, partitioned by ride): each command decided by agents.trips.

State first (STATE_FIRST): a ride's new state is written, with the records it decided (its outbox)
and the offset of the command, and acked before any of those records is produced. A crash before
the ack replays the commands against the old state (nothing was sent); a crash after it replays
them against the new state, which re-sends the outbox instead of deciding again. So no event,
offer or push is ever seen that the ride's durable state does not reflect, and a version is never
logged as two different events (readers keep the first copy of a version; the gateway drops a
seq it has).

Offer commands go to the driver desk (`DriverDesk.submit`): decided in this same transaction
when this worker holds the driver's partition, sent to `offers` otherwise. Read through agents.feed.
"""
from __future__ import annotations

import functools
import logging
from collections import Counter
from typing import Callable, Collection, Sequence

import faust

from agents.candidates import CellDriversView
from agents.desk import DriverDesk
from agents.estimates import Candidate
from agents.runtime import DeadLetters, decode
from agents.trips import FINAL, ME, DispatchPolicy, Step, apply_command, held_until
from infra.inbound import Inbound
from infra.producer import AsyncProducer
from agents.commands import ride_command
from agents.notify_triggers import arriving_notification, ride_notification
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.topics import NOTIFICATION_REQUESTS, OFFERS, ORDER_EVENTS, PUSH, RIDE_COMMANDS, RIDES
from tables.table import Table
from tables.transaction import STATE_FIRST, TOGETHER, Transaction, commit

__all__ = ["RidesAgent", "register"]

log = logging.getLogger(__name__)

Ride = typed.Ride
OUTGOING = "rides.outgoing"  # what the batch's commands decided, in order, until the batch ends
HELD_MAX = 50_000


class RidesAgent:
    """Applies RideCommand records: `ride_to_state` (with its outbox) first, then the records."""

    name = "rides"
    order = STATE_FIRST

    def __init__(self, *, rides: Table[Ride], desk: DriverDesk, dead_letters: DeadLetters, view: CellDriversView,
                 policy: DispatchPolicy, candidate_max_age_ms: int, clock_ms: Callable[[], int]) -> None:
        self.rides = rides
        self.desk = desk
        self.dead_letters = dead_letters
        self.view = view
        self.policy = policy
        self.max_age_ms = candidate_max_age_ms
        self.clock_ms = clock_ms
        self.command_codec = typed_codec(records.RideCommand, typed.RideCommand)
        self.event_codec = typed_codec(records.RideEvent, typed.RideEvent)
        self.offer_codec = typed_codec(records.OfferCommand, typed.OfferCommand)
        self.push_codec = typed_codec(records.PushMessage, typed.PushMessage)
        self.order_codec = typed_codec(records.OrderEvent, typed.OrderEvent)
        self.notify_codec = typed_codec(records.NotificationRequest, typed.NotificationRequest)
        self.deadlines: dict[str, int] = {}  # ride id -> when its timer acts (ms)
        self.busy_until: dict[str, int] = {}  # driver id -> until when it is reserved or busy (a hint)
        self.busy_hint_ms = policy.candidate_max_age_ms // 4
        self.outcomes: Counter[str] = Counter()

    # --- matching -----------------------------------------------------------------------------------
    def query(self, cell: str, k: int, exclude: Collection[str]) -> list[Candidate]:
        now = self.clock_ms()
        found = self.view.candidates(cell, k, now_ms=now, max_age_ms=self.max_age_ms, exclude=exclude)
        return [c for c in found if self.busy_until.get(c.driver_id, 0) <= now]

    def note_held(self, cmd: typed.RideCommand) -> None:
        """Remember drivers the desk said are held, until when: the replica learns it later, and asking
        a held driver for every other ride costs a round trip each (a hint, not a rule)."""
        until, driver = held_until(cmd, self.clock_ms(), self.busy_hint_ms), cmd["driver_id"]
        if until is not None and driver:
            self._hold(driver, until)

    def note_asked(self, offers: Sequence[typed.OfferCommand]) -> None:
        """Drivers just asked to reserve are held for other rides until answered; released ones are not."""
        now = self.clock_ms()
        for o in offers:
            if o["op"] in ("RESERVE", "RELEASE", "FREE"):
                self._hold(o["driver_id"], now + self.policy.reserve_timeout_ms if o["op"] == "RESERVE" else 0)

    def _hold(self, driver_id: str, until: int) -> None:
        if until:
            self.busy_until[driver_id] = until
        else:
            self.busy_until.pop(driver_id, None)
        if len(self.busy_until) > HELD_MAX:
            now = self.clock_ms()
            self.busy_until = {d: t for d, t in self.busy_until.items() if t > now}

    # --- the agent ------------------------------------------------------------------------------------
    async def prepare(self, records: Sequence[Inbound]) -> None:
        await self.view.ready.wait()  # no matching against an empty replica after a restart

    def step(self, tx: Transaction, record: Inbound) -> None:
        cmd: typed.RideCommand = decode(self.command_codec, record)
        self.note_held(cmd)
        ride_id, offset = cmd["ride_id"], record.offset
        ride = self.rides.get(ride_id, record.partition)
        if ride is not None and offset <= ride["applied_offset"]:
            # Applied before a crash, maybe not sent: send what it decided then, never decide again
            # (the replica and the clock have moved; a second decision could differ from the first).
            if offset == ride["applied_offset"]:
                for m in ride["outbox"]:
                    tx.collect(OUTGOING, m)
            return
        step = apply_command(ride, cmd, self.policy, self.query, self.clock_ms())
        self._count(cmd, step)
        self.note_asked(step.offers)
        messages = self._encode(step)
        for m in messages:
            tx.collect(OUTGOING, m)
        if step.ride is not None:
            # The outbox holds every record this batch decided for the ride: none is sent before the
            # batch's state is acked, so a replay from the last command must re-send them all.
            earlier = ride["outbox"] if ride is not None and tx.wrote(self.rides, ride_id) else []
            step.ride["applied_offset"], step.ride["outbox"] = offset, [*earlier, *messages]
            tx.put(self.rides, ride_id, step.ride, record.partition)
            tx.committed.append(functools.partial(self._track_deadline, step.ride))

    def end(self, tx: Transaction) -> None:
        """The batch's records, in the order decided: offer commands through the desk, the rest out."""
        for m in tx.collected(OUTGOING):
            if m["topic"] == OFFERS.name:
                self.desk.submit(tx, m["value"])
            else:
                tx.send(m["topic"], m["value"], key=m["key"].encode())
        self.desk.end(tx)

    def aborted(self) -> None:
        return None

    def _encode(self, step: Step) -> list[typed.Outgoing]:
        """The step's records as Outgoing (topic, key, Avro value)."""
        out: list[typed.Outgoing] = [
            {"topic": RIDES.name, "key": e["ride_id"], "value": self.event_codec.dumps(e)} for e in step.events]
        out += [{"topic": OFFERS.name, "key": o["driver_id"], "value": self.offer_codec.dumps(o)} for o in step.offers]
        out += [{"topic": PUSH.name, "key": p["channel"], "value": self.push_codec.dumps(p)} for p in step.pushes]
        out += [{"topic": ORDER_EVENTS.name, "key": e["order_id"], "value": self.order_codec.dumps(e)}
                for e in step.order_events]
        return out + self._notifications(step)

    def _notifications(self, step: Step) -> list[typed.Outgoing]:
        """The rider's notifications of the step (agents.notify_triggers), in the ride's outbox like the rest."""
        asks = [ride_notification(e) for e in step.events]
        if step.ride is not None:
            asks += [arriving_notification(step.ride, step.ride["pushed_eta_s"], p["sent_ts"])
                     for p in step.pushes if p["type"] == "ride.driver"]
        return [{"topic": NOTIFICATION_REQUESTS.name, "key": n["user_id"], "value": self.notify_codec.dumps(n)}
                for n in asks if n is not None]

    def _count(self, cmd: typed.RideCommand, step: Step) -> None:
        self.outcomes[cmd["command"]] += 1
        if step.refusal:
            self.outcomes["refused"] += 1
            log.info("ride %s: %s refused: %s", cmd["ride_id"], cmd["command"], step.refusal)

    # --- deadlines ------------------------------------------------------------------------------------
    def _track_deadline(self, ride: Ride) -> None:
        if ride["deadline_ms"] and ride["state"] not in FINAL:
            self.deadlines[ride["ride_id"]] = ride["deadline_ms"]
        else:
            self.deadlines.pop(ride["ride_id"], None)

    async def fire_deadlines(self, producer: AsyncProducer) -> int:
        """Send TIMEOUT for every deadline that has passed (the timer); how many."""
        now = self.clock_ms()
        due = [(ride_id, at) for ride_id, at in self.deadlines.items() if at <= now]
        if not due:
            return 0
        tx = Transaction(TOGETHER, "ride-deadlines")
        for ride_id, at in due:
            del self.deadlines[ride_id]  # the TIMEOUT carries it; the ride sets the next one
            cmd = ride_command(ride_id, "TIMEOUT", now, "system", ME, expires_at=at)
            tx.send(RIDE_COMMANDS.name, self.command_codec.dumps(cmd), key=ride_id.encode())
        try:
            await commit(tx, producer)
        except Exception:
            for ride_id, at in due:  # not sent: keep them for the next tick (a duplicate TIMEOUT is stale)
                self.deadlines.setdefault(ride_id, at)
            raise
        return len(due)

    def rebuild_deadlines(self) -> None:
        """After recovery or a rebalance: the deadlines of the rides this worker now owns, from the table."""
        self.deadlines.clear()
        for _key, ride in self.rides.stored():
            self._track_deadline(ride)


def register(app: faust.App, agent: RidesAgent, producer: AsyncProducer, *, tick_s: float) -> None:
    """Attach the rides agent's deadline timer and its table-recovery hook to `app`.

    Its commands come through `agents.feed.BatchFeed`, not a Faust agent (see there why)."""

    @app.timer(interval=tick_s, name="ride_deadlines")  # type: ignore[untyped-decorator]  # faust's timer
    async def ride_deadlines() -> None:
        try:
            await agent.fire_deadlines(producer)
        except Exception:  # Kafka hiccup: the deadlines stay, the next tick tries again
            log.exception("firing ride deadlines")

    async def on_recover() -> None:
        agent.rebuild_deadlines()

    agent.rides.faust.on_recover(on_recover)
