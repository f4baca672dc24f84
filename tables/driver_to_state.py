"""driver_id -> DriverState (Avro bytes): the latest accepted position and status of each driver."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "driver_to_state"]

NAME = "driver_to_state"


def driver_to_state(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `locations`. Values are DriverState Avro bytes
    (written by the driver desk through tables.table); keys are driver ids as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="latest accepted state per driver (DriverState, Avro)")
