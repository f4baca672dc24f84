"""Every topic livetrack uses, declared once with its key, value type and config.

infra creates them from here (idempotently); the Faust app and the gateway bind
to them from here; nobody spells a topic name anywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

import faust

from schemas.records import (
    CellActivityBatch, CellFeatures, CellMembershipBatch, DeadLetter, DriverStatusChanged, LocationBatch,
    NotificationAudit, NotificationDelivery, NotificationRequest, OfferCommand, Order, OrderEvent, PushMessage,
    RideCommand, RideEvent,
)

__all__ = [
    "TopicSpec", "LOCATIONS", "DRIVER_STATUS", "DRIVER_CELLS", "PUSH", "LOCATIONS_DLQ", "RIDES", "RIDE_COMMANDS", "OFFERS",
    "DISPATCH_DLQ", "CELL_ACTIVITY", "CELL_FEATURES", "FEATURES_DLQ", "ORDER_EVENTS", "ORDERS", "ORDERS_DLQ",
    "LEGACY_ORDER_EVENTS", "NOTIFICATION_REQUESTS", "NOTIFICATION_DELIVERIES", "NOTIFICATIONS_AUDIT",
    "NOTIFICATIONS_DLQ", "ALL_TOPICS",
]


@dataclass(frozen=True)
class TopicSpec:
    """A topic: name, what its key is, its value Record, and how Kafka keeps it."""

    name: str
    key: str
    # None: the value is JSON text written outside livetrack (the legacy bridge), not an Avro Record.
    value_type: Type[faust.Record] | None
    # None = settings.partitions; co-partitioned topics must agree.
    partitions: int | None = None
    compacted: bool = False
    retention_setting: str | None = None
    config: dict[str, str] = field(default_factory=dict)

    def partition_count(self, default: int) -> int:
        return self.partitions or default

    @property
    def json_value(self) -> bool:
        """True when the value is JSON text rather than an Avro single-object record."""
        return self.value_type is None


# Batch topics: no key; the record sits on the partition murmur2(driver_id or cell) picks for
# every item in it (schemas.partitioning), exactly where a keyed record would be.
LOCATIONS = TopicSpec(
    "locations", "none (partition = murmur2(driver_id))", LocationBatch, retention_setting="locations_retention_ms"
)
DRIVER_STATUS = TopicSpec("driver-status", "driver_id", DriverStatusChanged)
DRIVER_CELLS = TopicSpec("driver-cells", "none (partition = murmur2(cell))", CellMembershipBatch)
PUSH = TopicSpec("push", "channel", PushMessage, retention_setting="push_retention_ms")
LOCATIONS_DLQ = TopicSpec("locations-dlq", "driver_id", DeadLetter, partitions=1)
# The trip audit log: every ride transition, keyed by ride_id; long retention like `locations`.
RIDES = TopicSpec("rides", "ride_id", RideEvent, retention_setting="locations_retention_ms")
# Features: sightings (drivers agent) and ride requests (demand agent), each copied to the
# partition of every cell of its k-ring, so smoothing needs nothing from other partitions.
CELL_ACTIVITY = TopicSpec("cell-activity", "none (partition = murmur2(cell))", CellActivityBatch)
# Window results for analytics, dispatch and the ops view. LogAppendTime: a record's timestamp
# says when it reached the log (window times are fields), so close -> topic is measurable.
CELL_FEATURES = TopicSpec(
    "cell-features", "cell", CellFeatures, retention_setting="locations_retention_ms",
    config={"message.timestamp.type": "LogAppendTime"},
)
FEATURES_DLQ = TopicSpec("features-dlq", "cell or ride_id", DeadLetter, partitions=1)

# What to do to a ride: one partition orders every command of a ride, and owns its `ride_to_state`.
RIDE_COMMANDS = TopicSpec("ride-commands", "ride_id", RideCommand)
# What to do to a driver's offer or assignment: co-partitioned with `locations`, so the agent that
# owns a driver's `driver_to_state` (and its `driver:{id}` push seq) decides reservations.
OFFERS = TopicSpec("offers", "driver_id", OfferCommand)
DISPATCH_DLQ = TopicSpec("dispatch-dlq", "ride_id or driver_id", DeadLetter, partitions=1)

# Orders: every system's events in (HTTP, the legacy bridge, any Kafka producer, and the pipeline's
# own courier moves), one partition per order owning its `order_to_state` and `order:{id}` seq.
ORDER_EVENTS = TopicSpec("order-events", "order_id", OrderEvent, retention_setting="locations_retention_ms")
# Each order as last decided, compacted: what every gateway node serves GET /v1/orders/{id} from.
ORDERS = TopicSpec("orders", "order_id", Order, compacted=True)
ORDERS_DLQ = TopicSpec("orders-dlq", "order_id", DeadLetter, partitions=1)
# The legacy bridge: each committed `order_events` row of the legacy PostgreSQL, by Debezium (Kafka
# Connect, outbox EventRouter). Key the order id (text); value the row's payload as JSON text;
# headers `row_id` (decimal) and `event_type`. At least once: readers drop repeated row_ids.
LEGACY_ORDER_EVENTS = TopicSpec(
    "legacy-order-events", "order_id", None, retention_setting="locations_retention_ms"
)

# Notifications: every input of a user's notifications on one partition (one writer per user: the
# notifications agent); the sends it decides for the provider channels (the senders agent); the audit
# log of every step, keyed by notification; sends that failed for good, re-drivable.
NOTIFICATION_REQUESTS = TopicSpec("notification-requests", "user_id", NotificationRequest)
NOTIFICATION_DELIVERIES = TopicSpec("notification-deliveries", "user_id", NotificationDelivery)
NOTIFICATIONS_AUDIT = TopicSpec("notifications-audit", "notification_id", NotificationAudit,
                                retention_setting="locations_retention_ms")
NOTIFICATIONS_DLQ = TopicSpec("notifications-dlq", "user_id", DeadLetter, partitions=1)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    LOCATIONS, DRIVER_STATUS, DRIVER_CELLS, PUSH, LOCATIONS_DLQ, RIDES, RIDE_COMMANDS, OFFERS, DISPATCH_DLQ, CELL_ACTIVITY,
    CELL_FEATURES, FEATURES_DLQ, ORDER_EVENTS, ORDERS, ORDERS_DLQ, LEGACY_ORDER_EVENTS,
    NOTIFICATION_REQUESTS, NOTIFICATION_DELIVERIES, NOTIFICATIONS_AUDIT, NOTIFICATIONS_DLQ,
)
