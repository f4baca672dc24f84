"""Drivers agent (topic `locations`, partitioned by driver): each ping to the driver desk.

A `locations` record is a LocationBatch of pings whose drivers all hash to its partition (the
gateway batches them: Faust's per-record cost would otherwise cap the worker). Each ping is
checked (range, partition), then applied by the desk (agents.pings.apply_ping); the sightings go
to the features agent's input (agents.activity). Read through agents.feed, in whole batches.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from agents.activity import ActivityFanout
from agents.desk import DriverDesk
from agents.pings import INVALID, JUMP, SIGHTED
from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.partitioning import partition_for
from schemas.validation import range_errors
from tables.transaction import TOGETHER, Transaction

__all__ = ["DriversAgent"]

SIGHTINGS = "drivers.sightings"


class DriversAgent:
    """Applies LocationBatch records through the desk; sightings to `cell-activity`."""

    name = "drivers"
    order = TOGETHER  # a ping's push and state together: a replay re-sends a duplicate's push (same seq)

    def __init__(self, *, desk: DriverDesk, dead_letters: DeadLetters, activity: ActivityFanout | None = None) -> None:
        self.desk = desk
        self.dead_letters = dead_letters
        self.activity = activity  # sightings for the features agent
        self.batch_codec = typed_codec(records.LocationBatch, typed.LocationBatch)
        self.ping_codec = typed_codec(records.LocationEvent, typed.LocationEvent)
        self.verdicts: Counter[str] = Counter()

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        batch: typed.LocationBatch = decode(self.batch_codec, record)
        for ping in batch["events"]:
            refusal = self._refusal(record, ping)
            if refusal:
                self.verdicts[INVALID] += 1
                self.dead_letters.send(tx, record, refusal, self.ping_codec.dumps(ping))
                continue
            result, seen = self.desk.ping(tx, ping, record.partition)
            self.verdicts[result.verdict] += 1
            if result.verdict == JUMP:
                self.dead_letters.send(tx, record, f"impossible jump (> {self.desk.pings.max_speed_mps} m/s)",
                                       self.ping_codec.dumps(ping))
            if self.activity is not None and result.verdict in SIGHTED and seen is not None:
                tx.collect(SIGHTINGS, (ping, seen["status"]))

    def end(self, tx: Transaction) -> None:
        self.desk.end(tx)
        if self.activity is not None:
            self.activity.send(tx, sightings=tx.collected(SIGHTINGS))

    def aborted(self) -> None:
        return None

    def _refusal(self, record: Inbound, ping: typed.LocationEvent) -> str | None:
        """Why a ping cannot be applied here, if it cannot (a producer that skipped the gateway)."""
        if partition_for(ping["driver_id"], self.desk.partitions) != record.partition:
            return "driver hashes to another partition"
        errors = range_errors(records.LocationEvent, ping)
        return "; ".join(f"{e.field} {e.reason}" for e in errors) or None
