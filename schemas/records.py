"""Every record type livetrack puts on a topic or in a table, declared once.

The Faust Record is the declaration: its annotations give the Avro schema
(`schemas.avro.avro_schema`), its field descriptors give the constraints the
gateway validates input against (`schemas.validation`).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import faust
from faust.models.fields import FloatField, IntegerField, StringField

__all__ = [
    "ChoiceField",
    "ID_PATTERN",
    "IdField",
    "DRIVER_STATUSES",
    "LocationEvent",
    "LocationBatch",
    "DriverStatusChanged",
    "PushMessage",
    "DriverState",
    "Decision",
    "DriverOutbox",
    "CellMembership",
    "CellMembershipBatch",
    "CellDrivers",
    "DeadLetter",
    "ORDER_STATUSES",
    "ORDER_EVENT_TYPES",
    "OrderEvent",
    "OrderStep",
    "Order",
    "RIDE_EVENTS",
    "RIDE_STATES",
    "RideEvent",
    "RIDE_COMMANDS",
    "RideCommand",
    "OFFER_OPS",
    "OfferCommand",
    "Outgoing",
    "Ride",
    "WINDOW_KINDS",
    "SPEED_SOURCES",
    "CellSighting",
    "CellRequest",
    "CellActivityBatch",
    "PaneTrace",
    "CellPane",
    "CellFeatures",
    "CellLatest",
    "Watermark",
    "NOTIFICATION_OPS",
    "NOTIFY_CHANNELS",
    "NOTIFY_PRIORITIES",
    "AUDIT_STEPS",
    "NotificationRequest",
    "NotificationDelivery",
    "NotificationAudit",
    "Receipt",
    "PendingSend",
    "UserNotification",
    "ChannelSend",
    "NotificationUser",
    "PUBLISHED_RECORDS",
]

# OFFLINE and ON_BREAK are the driver's own choice (its app); EN_ROUTE and ON_TRIP dispatch's.
DRIVER_STATUSES = ("OFFLINE", "AVAILABLE", "EN_ROUTE", "ON_TRIP", "ON_BREAK")
# Ids become channel names (driver:{id}): a charset every client and URL carries unescaped.
ID_MAX_LEN = 64
ID_PATTERN = rf"[A-Za-z0-9_.-]{{1,{ID_MAX_LEN}}}"
MEMBERSHIP_OPS = ("JOIN", "LEAVE", "REFRESH")
RIDE_STATES = ("REQUESTED", "OFFERED", "ACCEPTED", "ONGOING", "COMPLETED", "CANCELLED", "NO_DRIVERS")
# What happened; `state` is where the ride stands after it.
RIDE_EVENTS = (
    "REQUESTED", "OFFERED", "DECLINED", "EXPIRED", "ACCEPTED", "STARTED", "COMPLETED", "CANCELLED", "NO_DRIVERS",
)
ACTORS = ("rider", "driver", "ops", "system")
# What can be asked of a ride (topic `ride-commands`): by the gateway for riders, drivers and ops
# (REQUEST, CANCEL, START, COMPLETE), by the driver-keyed offers agent (reservation outcomes and
# the assigned driver's moves), and by the rides agent's own deadline timer (TIMEOUT).
RIDE_COMMANDS = (
    "REQUEST", "CANCEL", "START", "COMPLETE", "RESERVED", "REFUSED", "ASSIGNED", "DECLINED", "TIMEOUT",
    "DRIVER_MOVED",
)
# What the driver-keyed offers agent is asked (topic `offers`): by the rides agent (RESERVE, RELEASE,
# START, FREE), by the gateway for the driver (ACCEPT, DECLINE; ONLINE, OFFLINE, BREAK: the driver's
# own status), and by the orders agent (CARRY, DROP: the courier's moves go to an order or stop).
OFFER_OPS = ("RESERVE", "RELEASE", "ACCEPT", "DECLINE", "START", "FREE", "ONLINE", "OFFLINE", "BREAK", "CARRY", "DROP")
# An order's life (topic `order-events`); FAILED and CANCELLED end it too.
ORDER_STATUSES = (
    "CREATED", "CONFIRMED", "COURIER_ASSIGNED", "PICKED_UP", "OUT_FOR_DELIVERY", "ARRIVING", "DELIVERED", "FAILED",
    "CANCELLED",
)
# Every status is an event type; COURIER_MOVED is the pipeline's own (the courier's significant moves).
ORDER_EVENT_TYPES = (*ORDER_STATUSES, "COURIER_MOVED")
WINDOW_KINDS = ("TUMBLING", "HOPPING")
# Where a cell's travel speed came from: its own drivers' moves, or the configured default.
SPEED_SOURCES = ("CELL", "DEFAULT")


class ChoiceField(StringField):
    """A string restricted to `choices`; becomes an Avro enum."""

    def __init__(self, *, choices: tuple[str, ...], enum_name: str, **kwargs: object) -> None:
        self.choices = choices
        self.enum_name = enum_name
        super().__init__(choices=choices, enum_name=enum_name, **kwargs)  # type: ignore[arg-type]


class _Record(faust.Record, abstract=True, include_metadata=False):  # type: ignore[call-arg]
    """Base: no Faust metadata on the wire (Avro carries the schema)."""


class IdField(StringField):
    """An identifier: 1 to ID_MAX_LEN characters of ID_PATTERN."""

    pattern = ID_PATTERN


def _id(**kw: object) -> StringField:
    return IdField(min_length=1, max_length=ID_MAX_LEN, **kw)  # type: ignore[arg-type]


def _epoch_ms(**kw: object) -> IntegerField:
    return IntegerField(min_value=0, **kw)  # type: ignore[arg-type]


class LocationEvent(_Record, namespace="livetrack.LocationEvent"):  # type: ignore[call-arg]
    """One GPS fix from a device; the canonical `locations` log."""

    driver_id: str = _id()
    seq: int = IntegerField(min_value=0, max_value=2**62)
    lat: float = FloatField(min_value=-90, max_value=90)
    lng: float = FloatField(min_value=-180, max_value=180)
    fix_ts: int = _epoch_ms()
    received_ts: int = _epoch_ms()
    accuracy: Optional[float] = FloatField(required=False, default=None, min_value=0, max_value=100_000)
    speed: Optional[float] = FloatField(required=False, default=None, min_value=0, max_value=1_000)
    bearing: Optional[float] = FloatField(required=False, default=None, min_value=0, max_value=360)


class LocationBatch(_Record, namespace="livetrack.LocationBatch"):  # type: ignore[call-arg]
    """Pings whose drivers all hash to the partition this record is on.

    One Kafka record carries many pings because Faust's per-record cost
    (~200 us here) would otherwise cap the worker near 4,000 pings/s.
    """

    events: List[LocationEvent]


class DriverStatusChanged(_Record, namespace="livetrack.DriverStatusChanged"):  # type: ignore[call-arg]
    """A driver went online, offline, en route or on trip."""

    driver_id: str = _id()
    status: str = ChoiceField(choices=DRIVER_STATUSES, enum_name="DriverStatus")
    ts: int = _epoch_ms()


class PushMessage(_Record, namespace="livetrack.PushMessage"):  # type: ignore[call-arg]
    """What the gateway forwards to a channel's subscribers.

    `seq` is per channel, contiguous and assigned by the agent that owns the
    channel's state, so every gateway node gives the same seq to the same message.
    `data` is JSON text: push payloads vary by `type`.
    """

    channel: str = StringField(min_length=1, max_length=128)
    seq: int = IntegerField(min_value=1)
    type: str = StringField(min_length=1, max_length=64)
    priority: int = IntegerField(min_value=0, max_value=9)
    ttl_ms: int = IntegerField(min_value=0)
    sent_ts: int = _epoch_ms()
    event_ts: int = _epoch_ms()
    data: str = StringField()


class Outgoing(_Record, namespace="livetrack.Outgoing"):  # type: ignore[call-arg]
    """A record to produce: kept with the state that decided it until Kafka has it (an outbox)."""

    topic: str
    key: str
    value: bytes


class DriverState(_Record, namespace="livetrack.DriverState"):  # type: ignore[call-arg]
    """Latest accepted state of one driver (table `driver_to_state`)."""

    driver_id: str = _id()
    seq: int = IntegerField(min_value=0)
    lat: float = FloatField()
    lng: float = FloatField()
    fix_ts: int = _epoch_ms()
    received_ts: int = _epoch_ms()
    cell: str = StringField()
    status: str = ChoiceField(choices=DRIVER_STATUSES, enum_name="DriverStatus")
    push_seq: int = IntegerField(min_value=0)
    pushed_lat: float = FloatField()
    pushed_lng: float = FloatField()
    pushed_ts: int = _epoch_ms()
    membership_ts: int = _epoch_ms()
    speed: Optional[float] = FloatField(required=False, default=None)
    bearing: Optional[float] = FloatField(required=False, default=None)
    accuracy: Optional[float] = FloatField(required=False, default=None)
    # Dispatch, decided by the offers agent on this same record so that a reservation, the status
    # and the `driver:{id}` push seq change together: ride_id with reserved_until > 0 is a
    # reservation (an open offer) until then; ride_id with reserved_until == 0 is an assignment.
    ride_id: Optional[str] = StringField(required=False, default=None)
    offer_attempt: int = IntegerField(min_value=0, required=False, default=0)
    reserved_until: int = IntegerField(min_value=0, required=False, default=0)
    offer_seq: int = IntegerField(min_value=0, required=False, default=0)
    # Orders this driver carries as their courier (CARRY .. DROP): its significant moves go to each.
    orders: List[str] = []


class Decision(_Record, namespace="livetrack.Decision"):  # type: ignore[call-arg]
    """What one dispatch command decided for a driver: the command ("op ride_id attempt"), when, and
    the records it sent."""

    key: str
    ts: int = _epoch_ms()
    records: List[Outgoing] = []


class DriverOutbox(_Record, namespace="livetrack.DriverOutbox"):  # type: ignore[call-arg]
    """A driver's recent dispatch decisions (table `driver_to_outbox`): a command replayed after a
    crash re-sends what it sent the first time, whatever the driver's state shows now; a worker
    taking the driver's partition re-sends the recent ones before any later push of the driver."""

    driver_id: str = _id()
    decisions: List[Decision] = []


class CellMembership(_Record, namespace="livetrack.CellMembership"):  # type: ignore[call-arg]
    """A driver joined, left or is still in a cell; keyed by cell."""

    cell: str = StringField(min_length=1)
    driver_id: str = _id()
    op: str = ChoiceField(choices=MEMBERSHIP_OPS, enum_name="MembershipOp")
    status: str = ChoiceField(choices=DRIVER_STATUSES, enum_name="DriverStatus")
    ts: int = _epoch_ms()


class CellMembershipBatch(_Record, namespace="livetrack.CellMembershipBatch"):  # type: ignore[call-arg]
    """Membership changes whose cells all hash to the partition this record is on."""

    changes: List[CellMembership]


class CellDrivers(_Record, namespace="livetrack.CellDrivers"):  # type: ignore[call-arg]
    """Drivers in one H3 cell with their last-seen time (table `cell_to_drivers`)."""

    drivers: Dict[str, int]
    available: Dict[str, int]


class DeadLetter(_Record, namespace="livetrack.DeadLetter"):  # type: ignore[call-arg]
    """A record an agent could not accept, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: Optional[str] = None
    value: Optional[bytes] = None
    ts: int = 0

class RideEvent(_Record, namespace="livetrack.RideEvent"):  # type: ignore[call-arg]
    """One step of a ride's life (topic `rides`, keyed by ride_id): the trip's audit log.

    `version` counts the ride's events from 1, contiguous, so a reader can tell a replayed
    event (version already seen) from a gap. Demand features count `event == "REQUESTED"`.
    """

    ride_id: str = _id()
    version: int = IntegerField(min_value=1)
    event: str = ChoiceField(choices=RIDE_EVENTS, enum_name="RideEventType")
    state: str = ChoiceField(choices=RIDE_STATES, enum_name="RideState")
    ts: int = _epoch_ms()
    actor: str = ChoiceField(choices=ACTORS, enum_name="Actor")
    rider_id: str = _id()
    product: str = StringField(min_length=1, max_length=32)
    pickup_lat: float = FloatField(min_value=-90, max_value=90)
    pickup_lng: float = FloatField(min_value=-180, max_value=180)
    dest_lat: float = FloatField(min_value=-90, max_value=90)
    dest_lng: float = FloatField(min_value=-180, max_value=180)
    pickup_cell: str = StringField(min_length=1, max_length=16)
    driver_id: Optional[str] = StringField(required=False, default=None)
    fare_estimate: Optional[float] = FloatField(required=False, default=None)
    pickup_eta_s: Optional[float] = FloatField(required=False, default=None)
    reason: Optional[str] = StringField(required=False, default=None)
    # A delivery trip: the order livetrack's dispatch found this ride's driver for (its courier).
    order_id: Optional[str] = StringField(required=False, default=None)


class RideCommand(_Record, namespace="livetrack.RideCommand"):  # type: ignore[call-arg]
    """Something to apply to one ride (topic `ride-commands`, keyed by ride_id); the rides agent decides.

    REQUEST carries rider, product, pickup and destination; RESERVED, REFUSED, ASSIGNED and DECLINED
    come from the offers agent with the driver, the offer attempt and (RESERVED, ASSIGNED,
    DRIVER_MOVED) the driver's position; TIMEOUT names the deadline (`expires_at`) it fires for.
    """

    ride_id: str = _id()
    command: str = ChoiceField(choices=RIDE_COMMANDS, enum_name="RideCommandType")
    ts: int = _epoch_ms()
    actor: str = ChoiceField(choices=ACTORS, enum_name="Actor")
    actor_id: str = _id()
    rider_id: Optional[str] = StringField(required=False, default=None)
    product: Optional[str] = StringField(required=False, default=None)
    pickup_lat: Optional[float] = FloatField(required=False, default=None)
    pickup_lng: Optional[float] = FloatField(required=False, default=None)
    dest_lat: Optional[float] = FloatField(required=False, default=None)
    dest_lng: Optional[float] = FloatField(required=False, default=None)
    driver_id: Optional[str] = StringField(required=False, default=None)
    attempt: int = IntegerField(min_value=0, required=False, default=0)
    lat: Optional[float] = FloatField(required=False, default=None)
    lng: Optional[float] = FloatField(required=False, default=None)
    expires_at: int = IntegerField(min_value=0, required=False, default=0)
    reason: Optional[str] = StringField(required=False, default=None)
    order_id: Optional[str] = StringField(required=False, default=None)  # REQUEST of a delivery trip


class OfferCommand(_Record, namespace="livetrack.OfferCommand"):  # type: ignore[call-arg]
    """A step of one driver's offer or assignment (topic `offers`, keyed by driver_id).

    Decided where the driver's state lives (one partition owns a driver), so a reservation's
    check-and-set needs no lock. RESERVE carries the offer shown to the driver and its TTL.
    """

    driver_id: str = _id()
    op: str = ChoiceField(choices=OFFER_OPS, enum_name="OfferOp")
    ride_id: str = _id()
    ts: int = _epoch_ms()
    actor: str = ChoiceField(choices=ACTORS, enum_name="Actor")
    attempt: int = IntegerField(min_value=0, required=False, default=0)
    ttl_ms: int = IntegerField(min_value=0, required=False, default=0)
    pickup_lat: Optional[float] = FloatField(required=False, default=None)
    pickup_lng: Optional[float] = FloatField(required=False, default=None)
    dest_lat: Optional[float] = FloatField(required=False, default=None)
    dest_lng: Optional[float] = FloatField(required=False, default=None)
    fare_estimate: Optional[float] = FloatField(required=False, default=None)
    reason: Optional[str] = StringField(required=False, default=None)


class Ride(_Record, namespace="livetrack.Ride"):  # type: ignore[call-arg]
    """One ride as the rides agent holds it (table `ride_to_state`).

    `offer_driver` with state REQUESTED is a reservation asked for (no answer yet), with state
    OFFERED an open offer; `deadline_ms` is when the rides agent's timer acts (0 = none).
    `tried` drivers are never offered this ride again; `busy` ones (held by another offer) may be
    after a wait. `push_seq` is the `ride:{id}` channel's seq, owned by this record.
    """

    ride_id: str = _id()
    version: int = IntegerField(min_value=1)
    state: str = ChoiceField(choices=RIDE_STATES, enum_name="RideState")
    rider_id: str = _id()
    product: str = StringField()
    pickup_lat: float = FloatField()
    pickup_lng: float = FloatField()
    dest_lat: float = FloatField()
    dest_lng: float = FloatField()
    pickup_cell: str = StringField()
    requested_ts: int = _epoch_ms()
    updated_ts: int = _epoch_ms()
    fare_estimate: Optional[float] = FloatField(required=False, default=None)
    pickup_eta_s: Optional[float] = FloatField(required=False, default=None)
    driver_id: Optional[str] = StringField(required=False, default=None)
    offer_driver: Optional[str] = StringField(required=False, default=None)
    attempt: int = IntegerField(min_value=0, required=False, default=0)
    deadline_ms: int = IntegerField(min_value=0, required=False, default=0)
    ring: int = IntegerField(min_value=0, required=False, default=0)
    tried: List[str] = []
    busy: List[str] = []
    push_seq: int = IntegerField(min_value=0, required=False, default=0)
    driver_lat: Optional[float] = FloatField(required=False, default=None)
    driver_lng: Optional[float] = FloatField(required=False, default=None)
    pushed_lat: Optional[float] = FloatField(required=False, default=None)
    pushed_lng: Optional[float] = FloatField(required=False, default=None)
    pushed_eta_s: Optional[float] = FloatField(required=False, default=None)
    reason: Optional[str] = StringField(required=False, default=None)
    # The last `ride-commands` offset applied and what the commands applied with it sent: state
    # is written before its outputs, and a replayed command re-sends them instead of re-deciding.
    applied_offset: int = IntegerField(required=False, default=-1)
    outbox: List[Outgoing] = []
    order_id: Optional[str] = StringField(required=False, default=None)  # a delivery trip's order


class OrderEvent(_Record, namespace="livetrack.OrderEvent"):  # type: ignore[call-arg]
    """One event of an order's life (topic `order-events`, keyed by order_id), from any system.

    `event_id` is the source system's own id for the event (a retry carries the same one, so it is
    dropped as a duplicate) and `ts` its time at the source (a late event never moves the status
    back). CREATED carries the customer, pickup and drop-off, and `dispatch` when livetrack is to find
    the courier; COURIER_ASSIGNED carries `courier_id`; COURIER_MOVED (the pipeline's own) `lat`/`lng`.
    """

    order_id: str = _id()
    event_id: str = StringField(min_length=1, max_length=128)
    source: str = StringField(min_length=1, max_length=64)
    type: str = ChoiceField(choices=ORDER_EVENT_TYPES, enum_name="OrderEventType")
    ts: int = _epoch_ms()
    customer_id: Optional[str] = _id(required=False, default=None)
    pickup_lat: Optional[float] = FloatField(required=False, default=None, min_value=-90, max_value=90)
    pickup_lng: Optional[float] = FloatField(required=False, default=None, min_value=-180, max_value=180)
    dropoff_lat: Optional[float] = FloatField(required=False, default=None, min_value=-90, max_value=90)
    dropoff_lng: Optional[float] = FloatField(required=False, default=None, min_value=-180, max_value=180)
    courier_id: Optional[str] = _id(required=False, default=None)
    dispatch: bool = False
    lat: Optional[float] = FloatField(required=False, default=None, min_value=-90, max_value=90)
    lng: Optional[float] = FloatField(required=False, default=None, min_value=-180, max_value=180)
    reason: Optional[str] = StringField(required=False, default=None, max_length=500)


class OrderStep(_Record, namespace="livetrack.OrderStep"):  # type: ignore[call-arg]
    """One status of an order's timeline: when the source says it happened, who said so, and whether
    it came after a later status had (`late`: kept in the timeline, the status did not move back)."""

    status: str = ChoiceField(choices=ORDER_STATUSES, enum_name="OrderStatus")
    ts: int = _epoch_ms()
    received_ts: int = _epoch_ms()
    source: str = StringField()
    event_id: str = StringField()
    late: bool = False
    reason: Optional[str] = StringField(required=False, default=None)


class Order(_Record, namespace="livetrack.Order"):  # type: ignore[call-arg]
    """One order as the orders agent holds it (table `order_to_state`, and topic `orders`).

    `version` counts its changes; `push_seq` is the `order:{id}` channel's seq, owned by this record.
    `status_ts` is the source time of the current status (a late event is older than it).
    """

    order_id: str = _id()
    version: int = IntegerField(min_value=1)
    status: str = ChoiceField(choices=ORDER_STATUSES, enum_name="OrderStatus")
    status_ts: int = _epoch_ms()
    customer_id: str = _id()
    source: str = StringField()
    pickup_lat: float = FloatField()
    pickup_lng: float = FloatField()
    dropoff_lat: float = FloatField()
    dropoff_lng: float = FloatField()
    dispatch: bool = False
    courier_id: Optional[str] = StringField(required=False, default=None)
    courier_lat: Optional[float] = FloatField(required=False, default=None)
    courier_lng: Optional[float] = FloatField(required=False, default=None)
    courier_ts: int = IntegerField(min_value=0, required=False, default=0)
    eta_s: Optional[float] = FloatField(required=False, default=None)
    created_ts: int = _epoch_ms()
    updated_ts: int = _epoch_ms()
    timeline: List[OrderStep] = []
    push_seq: int = IntegerField(min_value=0, required=False, default=0)
    trip_id: Optional[str] = StringField(required=False, default=None)  # the ride dispatch found the courier by


class CellSighting(_Record, namespace="livetrack.CellSighting"):  # type: ignore[call-arg]
    """A driver's fix in a cell, as the features agent sees it (one per ping the drivers agent took)."""

    cell: str = StringField(min_length=1, max_length=16)
    driver_id: str = _id()
    seq: int = IntegerField(min_value=0)
    ts: int = _epoch_ms()
    lat: float = FloatField(min_value=-90, max_value=90)
    lng: float = FloatField(min_value=-180, max_value=180)
    available: bool


class CellRequest(_Record, namespace="livetrack.CellRequest"):  # type: ignore[call-arg]
    """A ride requested with its pickup in a cell (from a `rides` REQUESTED event)."""

    cell: str = StringField(min_length=1, max_length=16)
    ride_id: str = _id()
    ts: int = _epoch_ms()


class CellActivityBatch(_Record, namespace="livetrack.CellActivityBatch"):  # type: ignore[call-arg]
    """Sightings and requests for the features agent of one `cell-activity` partition.

    Each item goes to the partition of every cell of its cell's k-ring, so a
    partition holds all it needs to smooth the cells it owns.
    """

    sightings: List[CellSighting]
    requests: List[CellRequest]


class PaneTrace(_Record, namespace="livetrack.PaneTrace"):  # type: ignore[call-arg]
    """One driver in one cell during one pane: first and last fix, moving distance and time."""

    first_seq: int
    first_ts: int
    first_lat: float
    first_lng: float
    last_seq: int
    last_ts: int
    last_lat: float
    last_lng: float
    dist_m: float
    moving_ms: int
    segments: int
    available: bool


class CellPane(_Record, namespace="livetrack.CellPane"):  # type: ignore[call-arg]
    """What one partition saw of one cell during one pane (table `cell_to_activity`): the traces of
    the drivers of a cell it owns, or only who was there (available or not) for a neighbour's cell."""

    drivers: Dict[str, PaneTrace]
    present: Dict[str, bool]
    rides: Dict[str, int]


class CellFeatures(_Record, namespace="livetrack.CellFeatures"):  # type: ignore[call-arg]
    """Supply, demand, surge and travel speed of one H3 cell over one window (topic `cell-features`).

    `supply`: distinct AVAILABLE drivers seen in the cell in [start_ts, end_ts);
    `demand`: distinct rides requested with their pickup in it; `smoothed_*`: the
    k-ring weighted means; `surge` from the smoothed values; `speed_mps` from
    consecutive fixes of drivers in the cell. `final` is false for a running update.
    """

    cell: str = StringField(min_length=1, max_length=16)
    kind: str = ChoiceField(choices=WINDOW_KINDS, enum_name="WindowKind")
    size_s: int = IntegerField(min_value=1)
    start_ts: int = _epoch_ms()
    end_ts: int = _epoch_ms()
    final: bool
    supply: int = IntegerField(min_value=0)
    demand: int = IntegerField(min_value=0)
    smoothed_supply: float = FloatField(min_value=0)
    smoothed_demand: float = FloatField(min_value=0)
    surge: float = FloatField(min_value=0)
    speed_mps: float = FloatField(min_value=0)
    speed_source: str = ChoiceField(choices=SPEED_SOURCES, enum_name="SpeedSource")
    speed_segments: int = IntegerField(min_value=0)
    emitted_ts: int = _epoch_ms()


class CellLatest(_Record, namespace="livetrack.CellLatest"):  # type: ignore[call-arg]
    """A cell's latest final features of the primary window and its `cell:{h3}` push seq
    (table `cell_to_features`)."""

    features: Optional[CellFeatures] = None
    push_seq: int = 0


class Watermark(_Record, namespace="livetrack.Watermark"):  # type: ignore[call-arg]
    """How far a `cell-activity` partition's event time got, as of its last fully written batch
    (table `partition_to_watermark`)."""

    ts: int = _epoch_ms()


# Notifications (topic `notification-requests`, keyed by user_id): what other systems and the pipeline ask
# (REQUEST), and what the user's devices and the senders say back (ACK, READ, RESULT), the user's own
# settings (PREFERENCES, SUBSCRIBE) and the agent's timer (TICK): one stream, so one writer per user.
NOTIFICATION_OPS = ("REQUEST", "ACK", "READ", "RESULT", "PREFERENCES", "SUBSCRIBE", "TICK")
NOTIFY_CHANNELS = ("inapp", "webpush", "email", "sms")
NOTIFY_PRIORITIES = ("normal", "critical")
AUDIT_STEPS = (
    "requested", "duplicate", "suppressed", "deferred", "sent", "delivered", "failed", "unknown", "expired",
    "cancelled", "removed",
)


class NotificationRequest(_Record, namespace="livetrack.NotificationRequest"):  # type: ignore[call-arg]
    """One input of a user's notifications (topic `notification-requests`, keyed by user_id).

    REQUEST: `idempotency_key` (the caller's; the same key within the dedupe window is one notification),
    `category`, `priority`, `expires_at` (epoch ms, 0: never), `title`, `body`, `data` (JSON text) and
    optionally `channels` (else the category's ladder). ACK: the user saw every in-app notification up
    to `seq` (the client's ack of `user:{id}`), or `notification_id` (a web push click). READ:
    `notification_id` ('*': all). RESULT: a sender's outcome `result` for `notification_id` on `channel`.
    PREFERENCES: `payload` is the preferences JSON. SUBSCRIBE: `payload` is a web push subscription JSON.
    """

    op: str = ChoiceField(choices=NOTIFICATION_OPS, enum_name="NotificationOp")
    user_id: str = _id()
    ts: int = _epoch_ms()
    idempotency_key: Optional[str] = StringField(required=False, default=None, max_length=200)
    category: Optional[str] = StringField(required=False, default=None, max_length=64)
    priority: str = ChoiceField(choices=NOTIFY_PRIORITIES, enum_name="NotifyPriority", required=False,
                                default="normal")
    expires_at: int = IntegerField(min_value=0, required=False, default=0)
    title: Optional[str] = StringField(required=False, default=None, max_length=200)
    body: Optional[str] = StringField(required=False, default=None, max_length=2000)
    data: Optional[str] = StringField(required=False, default=None, max_length=4000)
    channels: List[str] = []
    source: Optional[str] = StringField(required=False, default=None, max_length=64)
    notification_id: Optional[str] = StringField(required=False, default=None, max_length=64)
    seq: int = IntegerField(min_value=0, required=False, default=0)
    channel: Optional[str] = StringField(required=False, default=None, max_length=16)
    result: Optional[str] = StringField(required=False, default=None, max_length=16)
    payload: Optional[str] = StringField(required=False, default=None, max_length=8000)


class NotificationDelivery(_Record, namespace="livetrack.NotificationDelivery"):  # type: ignore[call-arg]
    """One send to one provider channel (topic `notification-deliveries`, keyed by user_id), decided by the
    notifications agent, sent by the senders agent. `address` is the e-mail address, the phone number or
    the web push subscription (JSON); `event_ts` when the pipeline event or request happened."""

    notification_id: str
    idempotency_key: str
    user_id: str
    channel: str = ChoiceField(choices=NOTIFY_CHANNELS, enum_name="NotifyChannel")
    address: str
    category: str
    priority: str = ChoiceField(choices=NOTIFY_PRIORITIES, enum_name="NotifyPriority")
    title: str
    body: str
    data: Optional[str] = None
    expires_at: int = 0
    event_ts: int = 0
    decided_ts: int = 0


class NotificationAudit(_Record, namespace="livetrack.NotificationAudit"):  # type: ignore[call-arg]
    """One step of a notification (topic `notifications-audit`, keyed by notification_id)."""

    notification_id: str
    user_id: str
    step: str = ChoiceField(choices=AUDIT_STEPS, enum_name="AuditStep")
    ts: int = _epoch_ms()
    channel: Optional[str] = None
    reason: Optional[str] = None
    provider: Optional[str] = None
    idempotency_key: Optional[str] = None
    category: Optional[str] = None


class Receipt(_Record, namespace="livetrack.Receipt"):  # type: ignore[call-arg]
    """The delivery ledger's entry for one notification on one channel (table `delivery_to_receipt`):
    `status` sent (a provider accepted it) or unknown (it timed out: never sent blindly again)."""

    status: str
    provider: str
    ts: int = _epoch_ms()


class PendingSend(_Record, namespace="livetrack.PendingSend"):  # type: ignore[call-arg]
    """A step of a notification's ladder not sent yet: its channels, when (`due_ms`), and whether it
    is an escalation (cancelled by an ack) and was deferred by quiet hours already."""

    channels: List[str]
    due_ms: int
    escalation: bool = False
    deferred: bool = False


class UserNotification(_Record, namespace="livetrack.UserNotification"):  # type: ignore[call-arg]
    """One notification in a user's inbox."""

    notification_id: str
    idempotency_key: str
    category: str
    priority: str
    title: str
    body: str
    data: Optional[str] = None
    created_ts: int = 0
    event_ts: int = 0
    expires_at: int = 0
    seq: int = 0  # its in-app message's seq on `user:{id}` (0: not shown in-app yet)
    acked: bool = False
    read: bool = False
    pending: List[PendingSend] = []


class ChannelSend(_Record, namespace="livetrack.ChannelSend"):  # type: ignore[call-arg]
    """A non-critical send on a channel, kept for the user's rate cap."""

    channel: str
    ts: int


class NotificationUser(_Record, namespace="livetrack.NotificationUser"):  # type: ignore[call-arg]
    """A user's notifications as the notifications agent holds them (table `user_to_notifications`):
    preferences (JSON), web push subscriptions (JSON each), the `user:{id}` push seq, the inbox, the
    idempotency keys seen within the dedupe window (key -> first seen, ms), recent sends for caps."""

    user_id: str
    preferences: str = "{}"
    subscriptions: List[str] = []
    push_seq: int = 0
    inbox: List[UserNotification] = []
    seen: Dict[str, int] = {}
    sends: List[ChannelSend] = []


# The records analytics consumers read off topics; `livetrack schemas export` writes their .avsc.
PUBLISHED_RECORDS = (
    LocationBatch, DriverStatusChanged, PushMessage, CellMembershipBatch, DeadLetter, RideEvent, RideCommand,
    OfferCommand, CellActivityBatch, CellFeatures, OrderEvent, Order, NotificationRequest, NotificationDelivery,
    NotificationAudit,
)
