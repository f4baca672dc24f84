"""driver_id -> DriverOutbox (Avro bytes): each driver's recent dispatch decisions and what they sent.

Kept apart from `driver_to_state`, which every ping rewrites: a driver's outbox changes only
when dispatch decides something for it.
"""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "driver_to_outbox"]

NAME = "driver_to_outbox"


def driver_to_outbox(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `locations` and `offers`. Keys are driver ids as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="recent dispatch decisions per driver (DriverOutbox, Avro)")
