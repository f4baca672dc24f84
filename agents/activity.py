"""What the drivers and demand agents send the features agent: sightings and requests, per partition.

Each item goes to the `cell-activity` partition of every cell in its cell's
k-ring (at most |k-ring| copies, fewer when neighbours share a partition), so
the partition owning a cell also holds its neighbours' activity and smooths
without asking other partitions (or workers).
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any, Mapping

from agents.errors import Rejected
from agents.features_math import kring
from agents.geo import cell_of
from infra.producer import AsyncProducer, DeliveryGroup
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import CellActivityBatch, RideEvent
from schemas.topics import CELL_ACTIVITY
from schemas.validation import range_errors

__all__ = ["ActivityFanout", "ride_request", "target_partitions"]


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

    def __init__(self, producer: AsyncProducer, *, partitions: int, resolution: int, k: int) -> None:
        self.producer = producer
        self.partitions = partitions
        self.resolution = resolution
        self.k = k
        self.codec = codec_for(CellActivityBatch)
        self._pending: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(
            lambda: {"sightings": [], "requests": []})

    def sighting(self, ping: Mapping[str, Any], status: str) -> None:
        """A driver's fix (a decoded LocationEvent) with the driver's status then."""
        cell = cell_of(ping["lat"], ping["lng"], self.resolution)
        item = {"cell": cell, "driver_id": ping["driver_id"], "seq": ping["seq"], "ts": ping["fix_ts"],
                "lat": ping["lat"], "lng": ping["lng"], "available": status == "AVAILABLE"}
        self._add("sightings", item)

    def request(self, item: dict[str, Any]) -> None:
        """A CellRequest (see `ride_request`)."""
        self._add("requests", item)

    def _add(self, kind: str, item: dict[str, Any]) -> None:
        for partition in target_partitions(item["cell"], self.k, self.partitions):
            self._pending[partition][kind].append(item)

    def send(self, group: DeliveryGroup) -> int:
        """Produce what was collected (in `group`); how many records."""
        for partition, batch in self._pending.items():
            self.producer.send(group, CELL_ACTIVITY.name, self.codec.dumps(batch), partition=partition)
        sent = len(self._pending)
        self._pending.clear()
        return sent
