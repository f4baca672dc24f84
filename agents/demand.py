"""Demand agent (topic `rides`, keyed by ride): ride requests to the cell-partitioned features input.

Stateless: each REQUESTED RideEvent becomes a CellRequest copied to the `cell-activity`
partitions of its pickup cell's k-ring; other events are not demand. A replay re-sends the same
requests, which the features agent holds as a set of ride ids per cell and pane.
"""
from __future__ import annotations

from typing import Sequence

from agents.activity import ActivityFanout, ride_request
from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from tables.transaction import TOGETHER, Transaction

__all__ = ["DemandAgent"]

REQUESTS = "demand.requests"


class DemandAgent:
    """Turns RideEvent records into CellRequests for the features agent."""

    name = "demand"
    order = TOGETHER

    def __init__(self, *, fanout: ActivityFanout, dead_letters: DeadLetters, resolution: int) -> None:
        self.fanout = fanout
        self.dead_letters = dead_letters
        self.resolution = resolution
        self.codec = typed_codec(records.RideEvent, typed.RideEvent)
        self.requests = 0

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        ride: typed.RideEvent = decode(self.codec, record)
        request = ride_request(ride, self.resolution)  # Rejected: out of range
        if request is not None:
            tx.collect(REQUESTS, request)
            self.requests += 1

    def end(self, tx: Transaction) -> None:
        self.fanout.send(tx, requests=tx.collected(REQUESTS))

    def aborted(self) -> None:
        return None
