"""order_id -> Order (Avro bytes): each order's status, timeline, courier and ETA."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "order_to_state"]

NAME = "order_to_state"


def order_to_state(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `order-events`. Values are Order Avro bytes (written by
    the orders agent through tables.table); keys are order ids as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="each order's status, timeline, courier and ETA (Order, Avro)")
