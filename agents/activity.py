"""What the drivers and demand agents send the features agent: sightings and requests, per partition.

Each item goes to the `cell-activity` partition of its cell and to those of
the other cells of its k-ring, so the partition owning a cell also holds its
neighbours' supply and demand and smooths without asking other partitions (or
workers). The cell's own partition gets every sighting (travel speed needs
consecutive fixes); the neighbours' partitions only need to know who was
there, available or not, in each pane, so a driver's further sightings in the
same cell and pane are not copied to them. What was copied is remembered only
once Kafka has it (`delivered`), so a batch that failed copies again when
replayed; a restart forgets it all, which only copies again too.
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any, Mapping

from agents.errors import Rejected
from agents.features_math import kring
from agents.geo import cell_of
from agents.panes import pane_start
from infra.producer import AsyncProducer, DeliveryGroup
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellActivityBatch, RideEvent
from schemas.topics import CELL_ACTIVITY
from schemas.validation import range_errors

__all__ = ["ActivityFanout", "ride_request", "target_partitions"]

COPIED_MAX = 1 << 18


@lru_cache(maxsize=1 << 16)
def target_partitions(cell: str, k: int, partitions: int) -> tuple[int, ...]:
    """The `cell-activity` partitions an item about `cell` goes to: those of its k-ring's cells."""
    return tuple(sorted({partition_for(n, partitions) for n in kring(cell, k)}))


def ride_request(ride: Mapping[str, Any], resolution: int) -> dict[str, Any] | None:
    """The demand a RideEvent stands for: a CellRequest when it is a request, else None (pure);
    Rejected when the request is out of range.

    The cell comes from the pickup point at the features' resolution, whatever
    resolution the ride's own `pickup_cell` uses.
    """
    if ride["event"] != "REQUESTED":
        return None
    problems = range_errors(RideEvent, ride)
    if problems:
        raise Rejected("; ".join(f"{e.field} {e.reason}" for e in problems))
    return {"cell": cell_of(ride["pickup_lat"], ride["pickup_lng"], resolution), "ride_id": ride["ride_id"],
            "ts": ride["ts"]}


class ActivityFanout:
    """Collects items for a batch; `send` produces one CellActivityBatch per partition touched."""

    def __init__(self, producer: AsyncProducer, *, partitions: int, resolution: int, k: int, pane_ms: int) -> None:
        self.producer = producer
        self.partitions = partitions
        self.resolution = resolution
        self.k = k
        self.pane_ms = pane_ms
        self.codec = codec_for(CellActivityBatch)
        self._pending: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(
            lambda: {"sightings": [], "requests": []})
        self._copied: dict[str, tuple[str, int, bool]] = {}  # driver -> (cell, pane, available) neighbours know
        self._copying: dict[str, tuple[str, int, bool]] = {}  # the same, collected in this batch
        self._unacked: dict[str, tuple[str, int, bool]] = {}  # the same, sent, not acked yet

    def sighting(self, ping: Mapping[str, Any], status: str) -> None:
        """A driver's fix (a decoded LocationEvent) with the driver's status then."""
        cell = cell_of(ping["lat"], ping["lng"], self.resolution)
        available = status == "AVAILABLE"
        item = {"cell": cell, "driver_id": ping["driver_id"], "seq": ping["seq"], "ts": ping["fix_ts"],
                "lat": ping["lat"], "lng": ping["lng"], "available": available}
        own = partition_for(cell, self.partitions)
        self._pending[own]["sightings"].append(item)
        pane = pane_start(ping["fix_ts"], self.pane_ms)
        driver = item["driver_id"]
        known = self._copying.get(driver) or self._copied.get(driver)
        if known is not None and known[0] == cell and known[1] == pane and (known[2] or not available):
            return  # the neighbours' partitions have this driver here, in this pane, as available
        self._copying[driver] = (cell, pane, available)
        for partition in target_partitions(cell, self.k, self.partitions):
            if partition != own:
                self._pending[partition]["sightings"].append(item)

    def request(self, item: dict[str, Any]) -> None:
        """A CellRequest (see `ride_request`): to every partition of its k-ring."""
        for partition in target_partitions(item["cell"], self.k, self.partitions):
            self._pending[partition]["requests"].append(item)

    def send(self, group: DeliveryGroup) -> int:
        """Produce what was collected (in `group`); how many records. Call `delivered` once acked."""
        for partition, batch in self._pending.items():
            self.producer.send(group, CELL_ACTIVITY.name, self.codec.dumps(batch), partition=partition)
        sent = len(self._pending)
        self._pending.clear()
        self._unacked, self._copying = self._copying, {}  # a failed batch's copies are never remembered
        return sent

    def delivered(self) -> None:
        """What the last `send` produced is in Kafka: the neighbours' partitions know it."""
        if len(self._copied) + len(self._unacked) > COPIED_MAX:
            self._copied.clear()  # forgetting only costs a few copies again
        self._copied.update(self._unacked)
        self._unacked = {}
