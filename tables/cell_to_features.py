"""H3 cell -> CellLatest (Avro bytes): a cell's latest final features of the primary window and
its `cell:{h3}` push seq. Written by the features agent; read by dispatch through FeatureLookup.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import faust

from agents.batching import unbound_event
from agents.features_math import FeaturePolicy, surge_of, travel_speed_of
from schemas.avro import AvroCodec

__all__ = ["NAME", "FeatureLookup", "cell_to_features"]

NAME = "cell_to_features"
RECENT_MS = 1_000
RECENT_MAX = 100_000


def cell_to_features(app: faust.App, partitions: int) -> faust.Table:
    """Declare the table; co-partitioned with `cell-activity`. Keys are H3 cells as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="latest features and cell channel seq per H3 cell (CellLatest, Avro)")


class FeatureLookup:
    """Surge (for a fare) and travel speed (for an ETA) of a cell, from the table, with fallbacks.

    Reads the store as it is (no write cache: the features agent may be another
    coroutine), from whichever of this worker's partitions holds the cell; a cell
    whose partition another worker owns reads as unknown, i.e. the surge floor and
    the default speed (README "Features": dispatch on several workers).
    """

    def __init__(self, table: faust.Table, codec: AvroCodec, policy: FeaturePolicy,
                 clock_ms: Callable[[], int]) -> None:
        self.table = table
        self.codec = codec
        self.policy = policy
        self.clock_ms = clock_ms
        # cell -> (read at, CellLatest): an ETA walks every cell of a route for each candidate, and
        # features change once per hop (30 s), so a second-old read is as good as a fresh one.
        self._recent: dict[str, tuple[int, Optional[dict[str, Any]]]] = {}

    def latest(self, cell: str) -> Optional[dict[str, Any]]:
        """The cell's CellLatest, or None."""
        now = self.clock_ms()
        hit = self._recent.get(cell)
        if hit is not None and now - hit[0] < RECENT_MS:
            return hit[1]
        with unbound_event():  # search this worker's partitions, not the current event's
            raw = self.table.data.get(cell.encode())
        value = self.codec.loads(raw) if raw is not None else None
        if len(self._recent) >= RECENT_MAX:
            self._recent.clear()
        self._recent[cell] = (now, value)
        return value

    def surge(self, cell: str) -> float:
        return surge_of(self.latest(cell), self.clock_ms(), self.policy)

    def travel_speed_mps(self, cell: str) -> float:
        return travel_speed_of(self.latest(cell), self.clock_ms(), self.policy)
