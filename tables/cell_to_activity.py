"""(H3 cell, partition) x pane -> CellPane (Avro bytes): a Faust tumbling windowed table of panes.

A pane is the time slice every feature window is a whole number of (gcd of the
hop and the sizes, 30 s by default); its value holds the cell's drivers (first
and last fix, moving distance and time, seen AVAILABLE) and requested ride ids.
The 1/2/4/8-minute tumbling and hopping windows are unions of consecutive panes
(window slicing), so an event updates one pane instead of one value per window
it falls in (up to 20 here).

Keys are Faust's windowed keys, `[[cell, partition], [start_s, end_s]]` as JSON,
so `table[(cell, p)]` reads them the Faust way. The partition is part of the key
because a cell's activity is also copied to its neighbours' partitions (k-ring
smoothing): each partition keeps its own copy, and a key lives in one partition,
as Faust's store assumes.

Faust closes windows by wall clock and forgets its expiry bookkeeping on restart;
the features agent closes them by event time instead and removes expired panes
itself (tombstones); the window's `expires` still sets the changelog's retention.
"""
from __future__ import annotations

import json
from datetime import timedelta
from functools import lru_cache
from typing import Any

import faust
import faust.types

__all__ = ["NAME", "MIN_RETENTION_S", "PaneKeys", "cell_to_activity", "decode_key"]

NAME = "cell_to_activity"
MIN_RETENTION_S = 3600  # changelog retention floor: a replay or catch-up may lag the wall clock


def cell_to_activity(app: faust.App, partitions: int, *, pane_ms: int, reach_ms: int) -> faust.types.TableT[Any, Any]:
    """Declare the table (tumbling by `pane_ms`, co-partitioned with `cell-activity`); `reach_ms`: how
    long a pane is needed (the longest window plus its grace)."""
    retention_s = max(MIN_RETENTION_S, 2 * reach_ms // 1000)
    windowed = app.Table(NAME, value_type=bytes, partitions=partitions,
                         help="activity per (cell, partition) and pane (CellPane, Avro)").tumbling(
        timedelta(milliseconds=pane_ms), expires=timedelta(seconds=retention_s))
    return windowed.table


class PaneKeys:
    """The store key (Faust's windowed key, JSON text) of a cell's pane in a partition.

    Formatted here (~1 us) instead of through Faust's serializer registry
    (~40 us): a unit test holds the two equal.
    """

    def __init__(self, table: faust.types.TableT[Any, Any]) -> None:
        window = table.window
        assert window is not None, "cell_to_activity is a windowed table"
        self.window = window
        self.encode = lru_cache(maxsize=1 << 18)(self._encode)

    def _encode(self, cell: str, partition: int, start_ms: int) -> str:
        start, end = self.window.current(start_ms / 1000)
        return json.dumps([[cell, partition], [start, end]], separators=(",", ":"))


def decode_key(key: Any) -> tuple[str, int, int]:
    """(cell, partition, pane start ms) of a stored pane key."""
    if isinstance(key, (bytes, str)):
        key = json.loads(key)
    (cell, partition), (start_s, _) = key
    return cell, int(partition), round(start_s * 1000)
