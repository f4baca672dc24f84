"""What the drivers and demand agents send the features agent: sightings and requests, per partition.

Each item goes to the `cell-activity` partition of its cell and to those of
the other cells of its k-ring, so the partition owning a cell also holds its
neighbours' supply and demand and smooths without asking other partitions (or
workers). The cell's own partition gets every sighting (travel speed needs
consecutive fixes); the neighbours' partitions only need to know who was
there, available or not, in each pane, so a driver's further sightings in the
same cell and pane are not copied to them. What was copied is remembered only
once its transaction has committed, so a batch that failed copies again when
replayed; a restart forgets it all, which only copies again too.
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any, Iterable, Mapping

from agents.errors import Rejected
from agents.features_math import kring
from agents.geo import cell_of
from agents.panes import pane_start
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.partitioning import partition_for
from schemas.topics import CELL_ACTIVITY
from schemas.validation import range_errors
from tables.transaction import Transaction

__all__ = ["ActivityFanout", "ride_request", "target_partitions"]

COPIED_MAX = 1 << 18


@lru_cache(maxsize=1 << 16)
def target_partitions(cell: str, k: int, partitions: int) -> tuple[int, ...]:
    """The `cell-activity` partitions an item about `cell` goes to: those of its k-ring's cells."""
    return tuple(sorted({partition_for(n, partitions) for n in kring(cell, k)}))


def ride_request(ride: typed.RideEvent, resolution: int) -> typed.CellRequest | None:
    """The demand a RideEvent stands for: a CellRequest when it is a request, else None (pure);
    Rejected when the request is out of range.

    The cell comes from the pickup point at the features' resolution, whatever
    resolution the ride's own `pickup_cell` uses.
    """
    if ride["event"] != "REQUESTED":
        return None
    problems = range_errors(records.RideEvent, ride)
    if problems:
        raise Rejected("; ".join(f"{e.field} {e.reason}" for e in problems))
    return {"cell": cell_of(ride["pickup_lat"], ride["pickup_lng"], resolution), "ride_id": ride["ride_id"],
            "ts": ride["ts"]}


class ActivityFanout:
    """Turns a batch's sightings and requests into one CellActivityBatch per partition touched."""

    def __init__(self, *, partitions: int, resolution: int, k: int, pane_ms: int) -> None:
        self.partitions = partitions
        self.resolution = resolution
        self.k = k
        self.pane_ms = pane_ms
        self.codec = typed_codec(records.CellActivityBatch, typed.CellActivityBatch)
        self._copied: dict[str, tuple[str, int, bool]] = {}  # driver -> (cell, pane, available) neighbours know

    def send(self, tx: Transaction, *, sightings: Iterable[tuple[typed.LocationEvent, str]] = (),
             requests: Iterable[typed.CellRequest] = ()) -> int:
        """Send the sightings (a decoded LocationEvent with the driver's status then) and the
        requests (CellRequests, see `ride_request`) in `tx`; how many records."""
        pending: dict[int, typed.CellActivityBatch] = defaultdict(lambda: {"sightings": [], "requests": []})
        copying: dict[str, tuple[str, int, bool]] = {}
        for ping, status in sightings:
            self._sighting(pending, copying, ping, status)
        for item in requests:
            for partition in target_partitions(item["cell"], self.k, self.partitions):
                pending[partition]["requests"].append(item)
        for partition, batch in pending.items():
            tx.send(CELL_ACTIVITY.name, self.codec.dumps(batch), partition=partition)
        if copying:
            tx.committed.append(lambda: self._delivered(copying))  # a failed batch's copies are never remembered
        return len(pending)

    def _sighting(self, pending: dict[int, typed.CellActivityBatch],
                  copying: dict[str, tuple[str, int, bool]], ping: typed.LocationEvent, status: str) -> None:
        cell = cell_of(ping["lat"], ping["lng"], self.resolution)
        available = status == "AVAILABLE"
        item: typed.CellSighting = {"cell": cell, "driver_id": ping["driver_id"], "seq": ping["seq"],
                                     "ts": ping["fix_ts"], "lat": ping["lat"], "lng": ping["lng"], "available": available}
        own = partition_for(cell, self.partitions)
        pending[own]["sightings"].append(item)
        pane = pane_start(ping["fix_ts"], self.pane_ms)
        driver = item["driver_id"]
        known = copying.get(driver) or self._copied.get(driver)
        if known is not None and known[0] == cell and known[1] == pane and (known[2] or not available):
            return  # the neighbours' partitions have this driver here, in this pane, as available
        copying[driver] = (cell, pane, available)
        for partition in target_partitions(cell, self.k, self.partitions):
            if partition != own:
                pending[partition]["sightings"].append(item)

    def _delivered(self, copied: dict[str, tuple[str, int, bool]]) -> None:
        """What a committed batch sent is in Kafka: the neighbours' partitions know it."""
        if len(self._copied) + len(copied) > COPIED_MAX:
            self._copied.clear()  # forgetting only costs a few copies again
        self._copied.update(copied)
