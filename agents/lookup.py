"""Surge and travel speed of a cell for dispatch, read from the features agent's `cell_to_features`."""
from __future__ import annotations

from typing import Callable

from agents.features_math import FeaturePolicy, surge_of, travel_speed_of
from schemas import typed
from tables.table import Table

__all__ = ["FeatureLookup"]

RECENT_MS = 1_000
RECENT_MAX = 100_000


class FeatureLookup:
    """Surge (for a fare) and travel speed (for an ETA) of a cell, from the table, with fallbacks.

    Reads the store as it is (no write cache: the features agent may be another
    coroutine), from whichever of this worker's partitions holds the cell; a cell
    whose partition another worker owns reads as unknown, i.e. the surge floor and
    the default speed (README "Features": dispatch on several workers).
    """

    def __init__(self, table: Table[typed.CellLatest], policy: FeaturePolicy, clock_ms: Callable[[], int]) -> None:
        self.table = table
        self.policy = policy
        self.clock_ms = clock_ms
        # cell -> (read at, CellLatest): an ETA walks every cell of a route for each candidate, and
        # features change once per hop (30 s), so a second-old read is as good as a fresh one.
        self._recent: dict[str, tuple[int, typed.CellLatest | None]] = {}

    def latest(self, cell: str) -> typed.CellLatest | None:
        """The cell's CellLatest, or None."""
        now = self.clock_ms()
        hit = self._recent.get(cell)
        if hit is not None and now - hit[0] < RECENT_MS:
            return hit[1]
        value = self.table.get_any(cell)  # the stored value, from whichever partition holds it
        if len(self._recent) >= RECENT_MAX:
            self._recent.clear()
        self._recent[cell] = (now, value)
        return value

    def surge(self, cell: str) -> float:
        return surge_of(self.latest(cell), self.clock_ms(), self.policy)

    def travel_speed_mps(self, cell: str) -> float:
        return travel_speed_of(self.latest(cell), self.clock_ms(), self.policy)
