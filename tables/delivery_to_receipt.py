"""'{notification_id}:{channel}:{address hash}' -> Receipt (Avro bytes): the delivery ledger."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "delivery_to_receipt"]

NAME = "delivery_to_receipt"


def delivery_to_receipt(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `notification-deliveries` (a send's ledger entry is in its
    user's partition). Values are Receipt Avro bytes, written by the senders agent only."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="what a provider accepted, per notification, channel and address (Receipt)")
