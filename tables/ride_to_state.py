"""ride_id -> Ride (Avro bytes): each ride as the rides agent last decided it."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "ride_to_state"]

NAME = "ride_to_state"


def ride_to_state(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `ride-commands`. Values are Ride Avro bytes; keys are ride ids as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="each ride's state, offer and deadline (Ride, Avro)")
