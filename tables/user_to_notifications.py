"""user_id -> NotificationUser (Avro bytes): a user's inbox, pending sends, preferences, subscriptions."""
from __future__ import annotations

from typing import Any

import faust
import faust.types

__all__ = ["NAME", "user_to_notifications"]

NAME = "user_to_notifications"


def user_to_notifications(app: faust.App, partitions: int) -> faust.types.TableT[Any, Any]:
    """Declare the table; co-partitioned with `notification-requests`. Values are NotificationUser Avro
    bytes (written by the notifications agent through tables.table); keys are user ids as UTF-8."""
    return app.Table(NAME, key_type=bytes, value_type=bytes, partitions=partitions,
                     help="each user's notifications, preferences and web push subscriptions (NotificationUser)")
