"""The driver desk: the one owner of every driver's state, and of what may change it when.

Pings (topic `locations`, agents.drivers), dispatch commands (topic `offers`, agents.offers) and
the commands the rides agent decides for drivers this worker holds (in place, agents.rides) all
reach a driver through this desk, and only through it: it alone writes `driver_to_state` and
`driver_to_outbox`, and it alone numbers the `driver:{id}` channel (the state's `push_seq`).

When a driver may change or be pushed is one rule, the commit runtime's: every transaction that
writes a driver's state (or pushes on its channel: it joins the driver's key) commits after the
ones that did before it (tables.table), while transactions on other drivers go on. So a driver's
pushes reach Kafka in seq order whichever agent decided them, and each decision sees the ones
before it, with no lock and no set of drivers to consult.

Crash safety. A dispatch decision is committed state first (its agents declare STATE_FIRST):
the driver's new state and the decision's records in `driver_to_outbox` are acked before any of
those records is sent. A command replayed after a crash finds its decision in the outbox and
sends exactly that again (same seqs), whatever the state shows by then; and a worker that takes
a driver partition (after a crash or a rebalance) first re-sends the recent decisions of its
drivers (`resend`), so no later push of a driver overtakes a decision it has not sent.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Collection, Iterable

from agents.notify_triggers import offer_notification
from agents.pings import DriverPolicy, PingResult, apply_ping
from agents.reservations import (
    DRIVER_OPS, NOTICE_TTL_MS, OfferPolicy, OfferResult, apply_driver_op, apply_offer, command_key,
)
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.partitioning import partition_for
from schemas.topics import DRIVER_CELLS, DRIVER_STATUS, NOTIFICATION_REQUESTS, OFFERS, ORDER_EVENTS, PUSH, RIDE_COMMANDS
from tables.table import Table
from tables.transaction import Transaction

__all__ = ["Decided", "DriverDesk", "OUTBOX_KEEP", "OUTBOX_KEEP_MS"]

State = typed.DriverState
Outbox = typed.DriverOutbox
OUTBOX_KEEP_MS = NOTICE_TTL_MS  # a decision older than its pushes' TTL is worth nothing re-sent
OUTBOX_KEEP = 16  # decisions kept per driver at most
MEMBERSHIPS = "desk.memberships"  # what a transaction collects for driver-cells


@dataclass(frozen=True)
class Decided:
    """One dispatch command applied to one driver: whether it changed the driver, and what it sent."""

    driver_id: str
    changed: bool
    records: list[typed.Outgoing]
    replayed: bool = False


class DriverDesk:
    """Owns `driver_to_state` and `driver_to_outbox`; every change to a driver goes through here."""

    def __init__(
        self, *, states: Table[State], outboxes: Table[Outbox], pings: DriverPolicy, offers: OfferPolicy,
        partitions: int, cell_partitions: int, owned: Callable[[], Collection[int]], clock_ms: Callable[[], int],
    ) -> None:
        self.states = states
        self.outboxes = outboxes
        self.pings = pings
        self.offers = offers
        self.partitions = partitions
        self.cell_partitions = cell_partitions
        self.owned = owned  # the driver partitions this worker holds now (agents.feed.Assignment)
        self.clock_ms = clock_ms
        self.push_codec = typed_codec(records.PushMessage, typed.PushMessage)
        self.notify_codec = typed_codec(records.NotificationRequest, typed.NotificationRequest)
        self.ride_codec = typed_codec(records.RideCommand, typed.RideCommand)
        self.status_codec = typed_codec(records.DriverStatusChanged, typed.DriverStatusChanged)
        self.offer_codec = typed_codec(records.OfferCommand, typed.OfferCommand)
        self.cells_codec = typed_codec(records.CellMembershipBatch, typed.CellMembershipBatch)
        self.order_codec = typed_codec(records.OrderEvent, typed.OrderEvent)
        self.ops: Counter[str] = Counter()

    def partition(self, driver_id: str) -> int:
        """The driver partition of `driver_id` (of `locations`, `offers` and the desk's tables)."""
        return partition_for(driver_id, self.partitions)

    def cell_partition(self, cell: str) -> int:
        """The `driver-cells` partition of a membership in `cell` (the cells agent's, by cell)."""
        return partition_for(cell, self.cell_partitions)

    # --- pings ------------------------------------------------------------------------------------
    def ping(self, tx: Transaction, ping: typed.LocationEvent, partition: int) -> tuple[PingResult, State | None]:
        """Apply one valid ping of a driver of `partition`; the result and the driver's state after it."""
        driver = ping["driver_id"]
        prev = self.states.get(driver, partition)
        result = apply_ping(prev, ping, self.pings, self.clock_ms())
        tx.join(self.states, driver)  # a duplicate's push again goes out in seq order too
        if result.state is not None:
            tx.put(self.states, driver, result.state, partition)
        if result.push is not None:
            push = result.push
            tx.send(PUSH.name, self.push_codec.dumps(push), key=push["channel"].encode())
        if result.ride_move is not None:
            move = result.ride_move
            tx.send(RIDE_COMMANDS.name, self.ride_codec.dumps(move), key=move["ride_id"].encode())
        for order_move in result.order_moves:
            tx.send(ORDER_EVENTS.name, self.order_codec.dumps(order_move), key=order_move["order_id"].encode())
        for m in result.memberships:
            tx.collect(MEMBERSHIPS, m)
        return result, result.state or prev

    # --- dispatch -----------------------------------------------------------------------------------
    def decide(self, tx: Transaction, cmd: typed.OfferCommand, partition: int) -> Decided:
        """Apply one OfferCommand for a driver of `partition`: its decision, or the one it made before."""
        driver, key, now = cmd["driver_id"], command_key(cmd), self.clock_ms()
        tx.join(self.states, driver)
        box = self.outboxes.get(driver, partition)
        earlier = next((d for d in box["decisions"] if d["key"] == key), None) if box else None
        if earlier is not None:
            records = list(earlier["records"])
            self._send(tx, records)
            self.ops["replayed"] += 1
            return Decided(driver, False, records, replayed=True)
        apply = apply_driver_op if cmd["op"] in DRIVER_OPS else apply_offer
        result = apply(self.states.get(driver, partition), cmd, self.offers, now)
        records = self._encode(result)
        if result.state is not None:
            tx.put(self.states, driver, result.state, partition)
            kept = [d for d in (box["decisions"] if box else []) if d["ts"] > now - OUTBOX_KEEP_MS]
            decision: typed.Decision = {"key": key, "ts": now, "records": records}
            decisions = [*kept[-(OUTBOX_KEEP - 1):], decision]
            outbox: Outbox = {"driver_id": driver, "decisions": decisions}
            tx.put(self.outboxes, driver, outbox, partition)
        self._send(tx, records)
        self.ops[cmd["op"]] += 1
        return Decided(driver, result.state is not None, records)

    def submit(self, tx: Transaction, value: bytes) -> bool:
        """An OfferCommand (Avro) for the driver desk: decided here, in `tx`, when this worker holds the
        driver's partition; else sent to `offers` for the worker that does. True: decided here."""
        cmd = self.offer_codec.loads(value)
        partition = self.partition(cmd["driver_id"])
        if partition not in self.owned():
            tx.send(OFFERS.name, value, key=cmd["driver_id"].encode())
            return False
        self.decide(tx, cmd, partition)
        self.ops["in_place"] += 1
        return True

    def resend(self, tx: Transaction, partitions: Iterable[int]) -> int:
        """Re-send the recent decisions of every driver of `partitions` (a worker taking them over: a
        decision acked but not sent before a crash must reach its channel before any later push)."""
        oldest = self.clock_ms() - OUTBOX_KEEP_MS
        tx.join(self.states)  # after every transaction on these drivers, and before any later one
        sent = 0
        for partition in partitions:
            for _driver, box in self.outboxes.stored([partition]):
                for decision in box["decisions"]:
                    if decision["ts"] > oldest:
                        sent += self._send(tx, decision["records"])
        return sent

    def end(self, tx: Transaction) -> None:
        """The batch's cell memberships: one CellMembershipBatch per `driver-cells` partition."""
        by_partition: dict[int, list[typed.CellMembership]] = defaultdict(list)
        for m in tx.collected(MEMBERSHIPS):
            by_partition[self.cell_partition(m["cell"])].append(m)
        for partition, changes in by_partition.items():
            tx.send(DRIVER_CELLS.name, self.cells_codec.dumps({"changes": changes}), partition=partition)

    def forget(self) -> None:
        """Partitions moved: drop cached values (recovery may rewrite the stores)."""
        self.states.forget()
        self.outboxes.forget()

    # --- records -------------------------------------------------------------------------------------
    def _send(self, tx: Transaction, records: Iterable[typed.Outgoing]) -> int:
        sent = 0
        for r in records:
            if r["topic"] == DRIVER_CELLS.name:  # by the cell's partition, as every membership
                tx.send(r["topic"], r["value"], partition=self.cell_partition(r["key"]))
            else:
                tx.send(r["topic"], r["value"], key=r["key"].encode())
            sent += 1
        return sent

    def _encode(self, result: OfferResult) -> list[typed.Outgoing]:
        """A decision's records as Outgoing (topic, key, Avro value); a membership keyed by its cell."""
        out: list[typed.Outgoing] = [
            {"topic": PUSH.name, "key": p["channel"], "value": self.push_codec.dumps(p)} for p in result.pushes]
        out += [{"topic": RIDE_COMMANDS.name, "key": r["ride_id"], "value": self.ride_codec.dumps(r)}
                for r in result.replies]
        out += [{"topic": DRIVER_STATUS.name, "key": st["driver_id"], "value": self.status_codec.dumps(st)}
                for st in result.statuses]
        out += [{"topic": DRIVER_CELLS.name, "key": m["cell"], "value": self.cells_codec.dumps({"changes": [m]})}
                for m in result.memberships]
        offers = [offer_notification(p) for p in result.pushes]  # the driver's (agents.notify_triggers)
        out += [{"topic": NOTIFICATION_REQUESTS.name, "key": n["user_id"], "value": self.notify_codec.dumps(n)}
                for n in offers if n is not None]
        return out
