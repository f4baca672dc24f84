"""`cell-activity` partition -> Watermark (Avro bytes): the event time the features agent had reached
when it last wrote a whole batch (after its new panes, before removing the panes it closed), so a
restart resumes exactly there."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "partition_to_watermark"]

NAME = "partition_to_watermark"


def partition_to_watermark(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `cell-activity`. Keys are partition numbers as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="features watermark per cell-activity partition (Watermark, Avro)")
