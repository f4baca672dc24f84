"""H3 cell -> CellDrivers (Avro bytes): who is in each cell, last seen when, who of them is available."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "cell_to_drivers"]

NAME = "cell_to_drivers"


def cell_to_drivers(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `driver-cells`. Values are CellDrivers Avro bytes; keys are H3 cells as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="drivers per H3 cell (CellDrivers, Avro)")
