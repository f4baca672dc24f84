"""H3 cell -> CellLatest (Avro bytes): a cell's latest final features of the primary window and
its `cell:{h3}` push seq. Written by the features agent; read by dispatch (agents.lookup).
"""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "cell_to_features"]

NAME = "cell_to_features"


def cell_to_features(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `cell-activity`. Keys are H3 cells as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="latest features and cell channel seq per H3 cell (CellLatest, Avro)")
