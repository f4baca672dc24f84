"""Demand agent (topic `rides`, keyed by ride): ride requests to the cell-partitioned features input.

Stateless: each REQUESTED RideEvent becomes a CellRequest copied to the
`cell-activity` partitions of its pickup cell's k-ring; other events are not
demand. A replay re-sends the same requests, which the features agent holds
as a set of ride ids per cell and pane.
"""
from __future__ import annotations

from typing import Sequence

import faust

from agents.activity import ActivityFanout, ride_request
from agents.batching import DeadLetters, decode_records, register_batched
from infra.producer import AsyncProducer
from schemas.records import RideEvent

__all__ = ["DemandAgent", "register"]


class DemandAgent:
    """Turns RideEvent records into CellRequests for the features agent."""

    def __init__(self, *, fanout: ActivityFanout, producer: AsyncProducer, dead_letters: DeadLetters,
                 resolution: int) -> None:
        self.fanout = fanout
        self.producer = producer
        self.dead_letters = dead_letters
        self.resolution = resolution
        self.requests = 0

    async def process(self, events: Sequence[faust.EventT]) -> None:
        """Forward a batch's requests; return once they (and any dead letters) are acked."""
        group = self.producer.group()
        for event, ride in decode_records(events, RideEvent, self.dead_letters, group):
            with self.dead_letters.guard(group, event, "bad ride event"):
                request = ride_request(ride, self.resolution)
                if request is not None:
                    self.fanout.request(request)
                    self.requests += 1
        self.fanout.send(group)
        await group.wait()


def register(app: faust.App, rides: faust.TopicT, agent: DemandAgent, *, batch_max: int,
             batch_within_s: float) -> faust.types.AgentT:
    """Attach the demand agent to `app`."""
    return register_batched(app, rides, "count_ride_requests", agent.process, batch_max=batch_max,
                            batch_within_s=batch_within_s)
