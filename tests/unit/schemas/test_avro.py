"""schemas.avro: Avro schemas derived from the Records, the single-object codec, the checked-in .avsc."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator, List, Optional, Type

import faust
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import typed
from schemas.avro import (
    AVSC_DIR, HISTORY_DIR, AvroCodec, SchemaMismatch, avro_schema, codec_for, read_history, schema_fingerprint,
    typed_codec, write_avsc,
)
from schemas.records import (
    DRIVER_STATUSES,
    ChannelSend,
    NotificationAudit,
    NotificationDelivery,
    NotificationRequest,
    NotificationUser,
    PendingSend,
    Receipt,
    UserNotification,
    PUBLISHED_RECORDS,
    CellActivityBatch,
    CellDrivers,
    CellFeatures,
    CellLatest,
    CellMembership,
    CellMembershipBatch,
    CellPane,
    CellRequest,
    CellSighting,
    ChoiceField,
    Order,
    OrderEvent,
    OrderStep,
    DeadLetter,
    Decision,
    DriverOutbox,
    DriverState,
    DriverStatusChanged,
    LocationBatch,
    LocationEvent,
    OfferCommand,
    Outgoing,
    PaneTrace,
    PushMessage,
    Ride,
    RideCommand,
    RideEvent,
    Watermark,
)

T0 = 1_732_170_000_000


class _TwoOfEach(faust.Record, namespace="livetrack.tests.TwoOfEach", include_metadata=False):  # type: ignore[call-arg]
    """Test-only: the same enum and the same nested record used twice in one schema."""

    before: str = ChoiceField(choices=DRIVER_STATUSES, enum_name="DriverStatus")
    after: str = ChoiceField(choices=DRIVER_STATUSES, enum_name="DriverStatus")
    first: LocationEvent
    last: LocationEvent


def _event(seq: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "driver_id": "d-1", "seq": seq, "lat": 37.7749, "lng": -122.4194, "fix_ts": T0 + seq,
        "received_ts": T0 + seq + 7, "accuracy": None, "speed": None, "bearing": None, **extra,
    }


_FEATURES = {
    "cell": "8928308280fffff", "kind": "HOPPING", "size_s": 120, "start_ts": T0, "end_ts": T0 + 120_000,
    "final": True, "supply": 4, "demand": 6, "smoothed_supply": 3.25, "smoothed_demand": 5.5, "surge": 1.4,
    "speed_mps": 7.5, "speed_source": "CELL", "speed_segments": 40, "emitted_ts": T0 + 131_000,
}
SAMPLES: dict[Type[faust.Record], dict[str, Any]] = {
    LocationEvent: _event(accuracy=4.5, speed=12.25, bearing=270.0),
    LocationBatch: {"events": [_event(1), _event(2, speed=3.5), _event(3, accuracy=1.0, bearing=0.0)]},
    DriverStatusChanged: {"driver_id": "d-1", "status": "ON_TRIP", "ts": T0},
    PushMessage: {
        "channel": "driver:d-1", "seq": 4, "type": "driver.location", "priority": 3, "ttl_ms": 10_000,
        "sent_ts": T0 + 20, "event_ts": T0 + 10, "data": '{"lat":37.7749,"lng":-122.4194}',
    },
    DriverState: {
        "driver_id": "d-1", "seq": 9, "lat": 37.7749, "lng": -122.4194, "fix_ts": T0, "received_ts": T0 + 3,
        "cell": "8928308280fffff", "status": "EN_ROUTE", "push_seq": 5, "pushed_lat": 37.77,
        "pushed_lng": -122.41, "pushed_ts": T0 - 1000, "membership_ts": T0 - 2000, "speed": 8.0,
        "bearing": None, "accuracy": 3.0, "ride_id": "r-1", "offer_attempt": 2, "reserved_until": T0 + 10_000,
        "offer_seq": 5, "orders": ["o-1"],
    },
    CellMembership: {"cell": "8928308280fffff", "driver_id": "d-1", "op": "REFRESH", "status": "AVAILABLE", "ts": T0},
    CellMembershipBatch: {"changes": [
        {"cell": "8928308280fffff", "driver_id": "d-1", "op": "LEAVE", "status": "ON_TRIP", "ts": T0},
        {"cell": "89283082803ffff", "driver_id": "d-1", "op": "JOIN", "status": "ON_TRIP", "ts": T0},
    ]},
    CellDrivers: {"drivers": {"d-1": T0, "d-2": T0 - 5}, "available": {"d-2": T0 - 5}},
    DeadLetter: {
        "topic": "locations", "partition": 3, "offset": 42, "reason": "impossible jump", "key": "d-1",
        "value": b"\xc3\x01\x00\xff", "ts": T0,
    },
    RideEvent: {
        "ride_id": "r-1", "version": 2, "event": "OFFERED", "state": "OFFERED", "ts": T0, "actor": "system",
        "rider_id": "u-1", "product": "standard", "pickup_lat": 37.7749, "pickup_lng": -122.4194,
        "dest_lat": 37.79, "dest_lng": -122.40, "pickup_cell": "8928308280fffff", "driver_id": "d-1",
        "fare_estimate": 12.5, "pickup_eta_s": 240.0, "reason": None, "order_id": None,
    },
    RideCommand: {
        "ride_id": "r-1", "command": "RESERVED", "ts": T0, "actor": "system", "actor_id": "offers",
        "rider_id": None, "product": None, "pickup_lat": None, "pickup_lng": None, "dest_lat": None,
        "dest_lng": None, "driver_id": "d-1", "attempt": 2, "lat": 37.77, "lng": -122.41, "expires_at": T0 + 10_000,
        "reason": None, "order_id": "o-1",
    },
    OfferCommand: {
        "driver_id": "d-1", "op": "RESERVE", "ride_id": "r-1", "ts": T0, "actor": "system", "attempt": 2,
        "ttl_ms": 10_000, "pickup_lat": 37.7749, "pickup_lng": -122.4194, "dest_lat": 37.79, "dest_lng": -122.40,
        "fare_estimate": 12.5, "reason": None,
    },
    Outgoing: {"topic": "rides", "key": "r-1", "value": b"\xc3\x01"},
    Ride: {
        "ride_id": "r-1", "version": 3, "state": "OFFERED", "rider_id": "u-1", "product": "standard",
        "pickup_lat": 37.7749, "pickup_lng": -122.4194, "dest_lat": 37.79, "dest_lng": -122.40,
        "pickup_cell": "8928308280fffff", "requested_ts": T0, "updated_ts": T0 + 5, "fare_estimate": 12.5,
        "pickup_eta_s": 240.0, "driver_id": None, "offer_driver": "d-1", "attempt": 2, "deadline_ms": T0 + 10_500,
        "ring": 1, "tried": ["d-0"], "busy": [], "push_seq": 3, "driver_lat": 37.77, "driver_lng": -122.41,
        "pushed_lat": None, "pushed_lng": None, "pushed_eta_s": None, "reason": None, "order_id": None, "applied_offset": 41,
        "outbox": [{"topic": "offers", "key": "d-1", "value": b"\xc3\x01\x00"}],
    },
    CellActivityBatch: {
        "sightings": [{"cell": "8928308280fffff", "driver_id": "d-1", "seq": 3, "ts": T0, "lat": 37.7749,
                       "lng": -122.4194, "available": True}],
        "requests": [{"cell": "8928308280fffff", "ride_id": "r-1", "ts": T0 + 5}],
    },
    CellPane: {
        "drivers": {"d-1": {
            "first_seq": 1, "first_ts": T0, "first_lat": 37.77, "first_lng": -122.41, "last_seq": 4,
            "last_ts": T0 + 9000, "last_lat": 37.771, "last_lng": -122.41, "dist_m": 111.2, "moving_ms": 9000,
            "segments": 3, "available": False,
        }},
        "present": {"d-2": False, "d-3": True},
        "rides": {"r-1": T0 + 5},
    },
    CellFeatures: _FEATURES,
    CellLatest: {"features": _FEATURES, "push_seq": 12},
    Watermark: {"ts": T0},
}
SAMPLES[Decision] = {"key": "RESERVE r-1 2", "ts": T0, "records": [
    {"topic": "push", "key": "driver:d-1", "value": b"\xc3\x01offer"},
    {"topic": "ride-commands", "key": "r-1", "value": b"\xc3\x01reserved"},
]}
SAMPLES[DriverOutbox] = {"driver_id": "d-1", "decisions": [SAMPLES[Decision], {"key": "FREE r-0 1", "ts": T0 - 5, "records": []}]}
SAMPLES[CellSighting] = SAMPLES[CellActivityBatch]["sightings"][0]
SAMPLES[CellRequest] = SAMPLES[CellActivityBatch]["requests"][0]
SAMPLES[PaneTrace] = SAMPLES[CellPane]["drivers"]["d-1"]
SAMPLES[OrderEvent] = {
    "order_id": "o-1", "event_id": "shop-1:e-7", "source": "shop-1", "type": "CREATED", "ts": T0,
    "customer_id": "c-1", "pickup_lat": 37.77, "pickup_lng": -122.41, "dropoff_lat": 37.78, "dropoff_lng": -122.42,
    "courier_id": None, "dispatch": False, "lat": None, "lng": None, "reason": None,
}
SAMPLES[OrderStep] = {"status": "CREATED", "ts": T0, "received_ts": T0 + 4, "source": "shop-1",
                      "event_id": "shop-1:e-7", "late": False, "reason": None}
SAMPLES[Order] = {
    "order_id": "o-1", "version": 2, "status": "CONFIRMED", "status_ts": T0 + 9, "customer_id": "c-1",
    "source": "shop-1", "pickup_lat": 37.77, "pickup_lng": -122.41, "dropoff_lat": 37.78, "dropoff_lng": -122.42,
    "dispatch": True, "trip_id": "trip-1", "courier_id": "d-1", "courier_lat": 37.771, "courier_lng": -122.411, "courier_ts": T0 + 8,
    "eta_s": 120.5, "created_ts": T0, "updated_ts": T0 + 10, "timeline": [
        SAMPLES[OrderStep], {**SAMPLES[OrderStep], "status": "CONFIRMED", "ts": T0 + 9, "event_id": "e-8"}],
    "push_seq": 2,
}
SAMPLES[NotificationRequest] = {
    "op": "REQUEST", "user_id": "u-1", "ts": T0, "idempotency_key": "shop-1:k-1", "category": "order.confirmed",
    "priority": "critical", "expires_at": T0 + 60_000, "title": "Confirmed", "body": "Your order", "data": "{}",
    "channels": ["inapp", "email"], "source": "shop-1", "notification_id": None, "seq": 0, "channel": None,
    "result": None, "payload": None,
}
SAMPLES[NotificationDelivery] = {
    "notification_id": "n-1", "idempotency_key": "k-1", "user_id": "u-1", "channel": "sms", "address": "+358401",
    "category": "order.arriving", "priority": "normal", "title": "Arriving", "body": "2 min", "data": None,
    "expires_at": 0, "event_ts": T0, "decided_ts": T0 + 3,
}
SAMPLES[NotificationAudit] = {
    "notification_id": "n-1", "user_id": "u-1", "step": "deferred", "ts": T0, "channel": "email",
    "reason": "quiet hours", "provider": None, "idempotency_key": "k-1", "category": "order.confirmed",
}
SAMPLES[Receipt] = {"status": "sent", "provider": "smtp:127.0.0.1:2525", "ts": T0}
SAMPLES[PendingSend] = {"channels": ["sms"], "due_ms": T0 + 20_000, "escalation": True, "deferred": False}
SAMPLES[UserNotification] = {
    "notification_id": "n-1", "idempotency_key": "k-1", "category": "ride.assigned", "priority": "normal",
    "title": "Driver on the way", "body": "", "data": None, "created_ts": T0, "event_ts": T0, "expires_at": 0,
    "seq": 3, "acked": False, "read": False, "pending": [SAMPLES[PendingSend]],
}
SAMPLES[ChannelSend] = {"channel": "sms", "ts": T0}
SAMPLES[NotificationUser] = {
    "user_id": "u-1", "preferences": "{}", "subscriptions": [], "push_seq": 3, "inbox": [SAMPLES[UserNotification]],
    "seen": {"k-1": T0}, "sends": [SAMPLES[ChannelSend]],
}
ALL_RECORDS = tuple(SAMPLES)

_CRC64_EMPTY = 0xC15D213AA4D7A795  # the Avro specification's "Schema Fingerprints" algorithm


def _crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO written from the Avro spec, to check fastavro's fingerprint against."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def _fingerprint(schema: Any) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO of a raw (unparsed) schema's parsing canonical form.

    fastavro's `fingerprint` hex is already those bytes in wire order (as Java's
    SchemaNormalization.parsingFingerprint returns them); the spec's algorithm confirms it.
    """
    canonical = to_parsing_canonical_form(schema)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    assert fp == _crc64_avro(canonical.encode()).to_bytes(8, "little")
    return fp


def _nodes(schema: Any) -> Iterator[Any]:
    """Every JSON node of a schema, depth first."""
    yield schema
    if isinstance(schema, dict):
        for v in schema.values():
            yield from _nodes(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _nodes(v)


def _definitions(schema: Any, name: str) -> list[dict[str, Any]]:
    return [n for n in _nodes(schema) if isinstance(n, dict) and n.get("name") == name and "type" in n
            and n["type"] in ("enum", "record")]


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    (field,) = [f for f in schema["fields"] if f["name"] == name]
    return field


# --- schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", ALL_RECORDS + (_TwoOfEach,), ids=lambda r: r.__name__)
def test_every_schema_parses(record: Type[faust.Record]) -> None:
    schema = avro_schema(record)
    parse_schema(schema)
    assert schema["type"] == "record"
    assert schema["name"] == record.__name__.lstrip("_")
    assert [f["name"] for f in schema["fields"]] == list(record._options.fields)


def test_location_event_field_types() -> None:
    schema = avro_schema(LocationEvent)
    assert (schema["name"], schema["namespace"]) == ("LocationEvent", "livetrack")
    assert {f["name"]: f["type"] for f in schema["fields"]} == {
        "driver_id": "string", "seq": "long", "lat": "double", "lng": "double", "fix_ts": "long",
        "received_ts": "long", "accuracy": ["null", "double"], "speed": ["null", "double"],
        "bearing": ["null", "double"],
    }
    assert schema["doc"] == "One GPS fix from a device; the canonical `locations` log."


def test_location_batch_inlines_location_event_once() -> None:
    schema = avro_schema(LocationBatch)
    assert _field(schema, "events")["type"] == {"type": "array", "items": avro_schema(LocationEvent)}
    assert len(_definitions(schema, "LocationEvent")) == 1


def test_a_record_used_twice_is_defined_then_referenced_by_full_name() -> None:
    schema = avro_schema(_TwoOfEach)
    assert _field(schema, "first")["type"] == avro_schema(LocationEvent)
    assert _field(schema, "last")["type"] == "livetrack.LocationEvent"


def test_driver_state_defines_the_driver_status_enum() -> None:
    schema = avro_schema(DriverState)
    assert _field(schema, "status")["type"] == {
        "type": "enum", "name": "DriverStatus", "namespace": "livetrack", "symbols": list(DRIVER_STATUSES),
    }
    assert len(_definitions(schema, "DriverStatus")) == 1


def test_cell_membership_has_two_different_enums() -> None:
    schema = avro_schema(CellMembership)
    op, status = _field(schema, "op")["type"], _field(schema, "status")["type"]
    assert op == {"type": "enum", "name": "MembershipOp", "namespace": "livetrack",
                  "symbols": ["JOIN", "LEAVE", "REFRESH"]}
    assert status["type"] == "enum" and status["name"] == "DriverStatus"
    assert status["symbols"] == list(DRIVER_STATUSES)


def test_enums_inside_an_array_of_records_are_defined_once() -> None:
    schema = avro_schema(CellMembershipBatch)
    assert len(_definitions(schema, "MembershipOp")) == 1
    assert len(_definitions(schema, "DriverStatus")) == 1


def test_an_enum_used_twice_is_defined_then_referenced_by_full_name() -> None:
    schema = avro_schema(_TwoOfEach)
    assert _field(schema, "before")["type"]["name"] == "DriverStatus"
    assert _field(schema, "after")["type"] == "livetrack.DriverStatus"
    assert len(_definitions(schema, "DriverStatus")) == 1


def test_each_schema_starts_with_no_names_defined() -> None:
    # A name defined in one record's schema must not become a dangling reference in the next one.
    avro_schema(DriverState)
    assert _field(avro_schema(DriverStatusChanged), "status")["type"]["type"] == "enum"
    avro_schema(LocationBatch)
    assert avro_schema(LocationEvent)["type"] == "record"


@pytest.mark.parametrize(("record", "name", "inner"), [
    (LocationEvent, "accuracy", "double"), (LocationEvent, "speed", "double"),
    (LocationEvent, "bearing", "double"), (DriverState, "speed", "double"),
    (DeadLetter, "key", "string"), (DeadLetter, "value", "bytes"),
])
def test_optional_fields_are_null_unions_defaulting_to_none(record: Type[faust.Record], name: str, inner: str) -> None:
    field = _field(avro_schema(record), name)
    assert field["type"] == ["null", inner]
    assert "default" in field and field["default"] is None


def test_required_fields_have_no_default_and_plain_defaults_are_kept() -> None:
    event = avro_schema(LocationEvent)
    for name in ("driver_id", "seq", "lat", "lng", "fix_ts", "received_ts"):
        assert "default" not in _field(event, name)
    assert _field(avro_schema(DeadLetter), "ts") == {"name": "ts", "type": "long", "default": 0}


def test_dicts_become_maps() -> None:
    schema = avro_schema(CellDrivers)
    assert _field(schema, "drivers")["type"] == {"type": "map", "values": "long"}
    assert _field(schema, "available")["type"] == {"type": "map", "values": "long"}


# --- codec -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: r.__name__)
def test_codec_round_trips_dicts(record: Type[faust.Record]) -> None:
    codec = codec_for(record)
    assert codec.loads(codec.dumps(SAMPLES[record])) == SAMPLES[record]


def test_codec_round_trips_a_location_event_record() -> None:
    event = LocationEvent(driver_id="d-7", seq=3, lat=1.5, lng=-2.25, fix_ts=T0, received_ts=T0 + 1, speed=4.0)
    codec = codec_for(LocationEvent)
    data = codec.dumps(event)
    assert data == codec.dumps(event.asdict())
    assert codec.loads(data) == {
        "driver_id": "d-7", "seq": 3, "lat": 1.5, "lng": -2.25, "fix_ts": T0, "received_ts": T0 + 1,
        "accuracy": None, "speed": 4.0, "bearing": None,
    }


def test_codec_round_trips_a_location_batch_dict_with_nested_events() -> None:
    batch = SAMPLES[LocationBatch]
    decoded = codec_for(LocationBatch).loads(codec_for(LocationBatch).dumps(batch))
    assert decoded["events"] == batch["events"]
    assert [e["seq"] for e in decoded["events"]] == [1, 2, 3]


def test_codec_encodes_a_batch_of_location_event_records() -> None:
    events = [LocationEvent(**_event(seq)) for seq in (1, 2)]
    codec = codec_for(LocationBatch)
    assert codec.loads(codec.dumps({"events": [e.asdict() for e in events]})) == {"events": [_event(1), _event(2)]}


def test_crc64_avro_reference_matches_the_avro_spec_vectors() -> None:
    # share/test/data/schema-tests.txt in apache/avro, as signed Java longs.
    for canonical, java_long in (('"null"', 7195948357588979594), ('"boolean"', -6970731678124411036),
                                 ('"int"', 8247732601305521295)):
        assert _crc64_avro(canonical.encode()) == java_long % (1 << 64)


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: r.__name__)
def test_bytes_are_magic_header_then_schemaless_body(record: Type[faust.Record]) -> None:
    data = codec_for(record).dumps(SAMPLES[record])
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec_for(record).header[2:]
    body = schemaless_reader(io.BytesIO(data[10:]), parse_schema(avro_schema(record)), None)
    assert body == SAMPLES[record]


def test_header_is_the_little_endian_crc64_avro_fingerprint() -> None:
    wrong = [r.__name__ for r in ALL_RECORDS
             if codec_for(r).dumps(SAMPLES[r])[2:10] != _fingerprint(avro_schema(r))]
    assert wrong == []


def test_fingerprints_differ_between_schemas() -> None:
    headers = {codec_for(r).header for r in ALL_RECORDS}
    assert len(headers) == len(ALL_RECORDS)


@pytest.mark.parametrize(("writer", "reader"), [
    (PushMessage, DriverStatusChanged), (LocationEvent, LocationBatch), (CellMembership, CellMembershipBatch),
    (DriverState, CellDrivers),
])
def test_decoding_another_schemas_bytes_raises_schema_mismatch(
    writer: Type[faust.Record], reader: Type[faust.Record]
) -> None:
    data = codec_for(writer).dumps(SAMPLES[writer])
    with pytest.raises(SchemaMismatch, match=reader.__name__):
        codec_for(reader).loads(data)


@pytest.mark.parametrize("data", [b"", b"\xc3\x01", b"\x00" * 20, b'{"driver_id": "d-1"}'])
def test_decoding_bytes_without_the_header_raises_schema_mismatch(data: bytes) -> None:
    with pytest.raises(SchemaMismatch):
        codec_for(LocationEvent).loads(data)


def test_schema_mismatch_is_a_value_error() -> None:
    # Agents catch ValueError (agents.batching.AGENT_ERRORS) to dead-letter a bad record.
    assert issubclass(SchemaMismatch, ValueError)


def test_codec_for_is_one_instance_per_record() -> None:
    assert codec_for(LocationBatch) is codec_for(LocationBatch)
    assert codec_for(LocationBatch) is not codec_for(LocationEvent)
    assert isinstance(codec_for(LocationBatch), AvroCodec)


def test_clone_keeps_the_record() -> None:
    clone = codec_for(PushMessage).clone()
    assert isinstance(clone, AvroCodec) and clone.record is PushMessage
    assert clone.loads(codec_for(PushMessage).dumps(SAMPLES[PushMessage])) == SAMPLES[PushMessage]


def test_clone_keeps_the_history(tmp_path: Path) -> None:
    assert AvroCodec(DriverState, tmp_path).clone().history == tmp_path


def test_typed_codec_is_the_record_codec() -> None:
    assert typed_codec(DriverState, typed.DriverState) is codec_for(DriverState)
    assert typed_codec(LocationBatch, typed.LocationBatch).loads(codec_for(LocationBatch).dumps(
        SAMPLES[LocationBatch])) == SAMPLES[LocationBatch]


@pytest.mark.parametrize("shape", [typed.Ride, typed.LocationEvent, dict])
def test_typed_codec_refuses_another_records_typed_dict(shape: Any) -> None:
    with pytest.raises(TypeError, match="DriverState"):
        typed_codec(DriverState, shape)


# --- older versions, kept in history ---------------------------------------------------------------


class Versioned(faust.Record, namespace="livetrack.tests.Versioned", include_metadata=False):
    """Test-only: the current version of a record that had an older one (`_OLD`)."""

    id: str
    seq: int
    status: str = ChoiceField(choices=DRIVER_STATUSES, enum_name="DriverStatus")
    note: Optional[str] = None  # added since, with defaults
    attempt: int = 0
    tags: List[str] = []


# The older version: no note, attempt or tags yet, and a `zone` since dropped.
_OLD: dict[str, Any] = {"type": "record", "name": "Versioned", "namespace": "livetrack.tests", "fields": [
    {"name": "id", "type": "string"}, {"name": "seq", "type": "long"}, {"name": "zone", "type": "string"},
    {"name": "status", "type": {"type": "enum", "name": "DriverStatus", "namespace": "livetrack",
                                "symbols": list(DRIVER_STATUSES)}},
]}
_OLD_VALUE = {"id": "v-1", "seq": 4, "zone": "north", "status": "ON_TRIP"}
_NOW_VALUE = {"id": "v-1", "seq": 4, "status": "ON_TRIP", "note": None, "attempt": 0, "tags": []}


def _keep(history: Path, schema: dict[str, Any]) -> bytes:
    """Keep `schema` as a version of Versioned in `history`, as `export` would; its single-object header."""
    fp = schema_fingerprint(schema)
    (history / "Versioned").mkdir(parents=True, exist_ok=True)
    (history / "Versioned" / f"{fp.hex()}.avsc").write_text(json.dumps(schema))
    return b"\xc3\x01" + fp


def _written(history: Path, schema: dict[str, Any] = _OLD, value: dict[str, Any] = _OLD_VALUE) -> bytes:
    """A record as `schema` (kept in `history`) wrote it."""
    buf = io.BytesIO()
    buf.write(_keep(history, schema))
    schemaless_writer(buf, parse_schema(schema), value)
    return buf.getvalue()


def test_a_kept_older_version_reads_as_the_current_schema(tmp_path: Path) -> None:
    assert AvroCodec(Versioned, tmp_path).loads(_written(tmp_path)) == _NOW_VALUE


def test_the_writer_writes_the_current_version_after_reading_an_old_one(tmp_path: Path) -> None:
    codec = AvroCodec(Versioned, tmp_path)
    again = codec.dumps(codec.loads(_written(tmp_path)))
    assert again[:10] == codec.header != _written(tmp_path)[:10]
    assert codec.loads(again) == _NOW_VALUE


def test_defaults_filled_in_are_fresh_objects_for_every_record(tmp_path: Path) -> None:
    # fastavro hands out the reader schema's own default list; a caller appending to it must not
    # change what the next old record decodes to.
    codec = AvroCodec(Versioned, tmp_path)
    data = _written(tmp_path)
    codec.loads(data)["tags"].append("changed")
    assert codec.loads(data)["tags"] == []


def test_an_unknown_fingerprint_names_the_record_and_the_fingerprint(tmp_path: Path) -> None:
    data = _written(tmp_path)
    for path in (tmp_path / "Versioned").iterdir():
        path.unlink()
    with pytest.raises(SchemaMismatch, match=f"Versioned.*{data[2:10].hex()}"):
        AvroCodec(Versioned, tmp_path).loads(data)


def test_a_kept_version_the_current_schema_cannot_read_raises_schema_mismatch(tmp_path: Path) -> None:
    # One the unit tests refuse (the current `seq` has no default): SchemaMismatch, as for any bytes it cannot read.
    no_seq = {**_OLD, "fields": [f for f in _OLD["fields"] if f["name"] != "seq"]}
    data = _written(tmp_path, no_seq, {k: v for k, v in _OLD_VALUE.items() if k != "seq"})
    with pytest.raises(SchemaMismatch, match="Versioned cannot read its version .*field seq"):
        AvroCodec(Versioned, tmp_path).loads(data)


def test_history_is_read_only_when_an_older_version_arrives(tmp_path: Path) -> None:
    codec = AvroCodec(Versioned, tmp_path)
    assert codec.loads(codec.dumps(_NOW_VALUE)) == _NOW_VALUE  # the current version needs no history
    assert codec._writers is None
    old = _written(tmp_path)  # kept after the codec was made: read on the first old record
    assert codec.loads(old) == _NOW_VALUE
    assert codec._writers is not None and list(codec._writers) == [old[2:10]]


def test_read_history_keys_versions_by_fingerprint(tmp_path: Path) -> None:
    header = _keep(tmp_path, _OLD)
    assert read_history("Versioned", tmp_path) == {header[2:]: _OLD}
    assert read_history("Nothing", tmp_path) == {}


def test_codecs_read_the_checked_in_history() -> None:
    assert HISTORY_DIR == AVSC_DIR / "history"
    assert codec_for(DriverState).history == HISTORY_DIR


# --- the checked-in .avsc files --------------------------------------------------------------------


@pytest.mark.parametrize("record", PUBLISHED_RECORDS, ids=lambda r: r.__name__)
def test_checked_in_avsc_is_current(record: Type[faust.Record]) -> None:
    """A Record changed without `livetrack schemas export` leaves a stale .avsc: this fails."""
    on_disk = json.loads((AVSC_DIR / f"{record.__name__}.avsc").read_text())
    assert on_disk == avro_schema(record)


def test_every_avsc_file_is_a_published_record() -> None:
    assert {p.stem for p in AVSC_DIR.glob("*.avsc")} == {r.__name__ for r in PUBLISHED_RECORDS}


def _read_avsc(record: Type[faust.Record]) -> Any:
    with (AVSC_DIR / f"{record.__name__}.avsc").open() as f:
        return json.load(f)


@pytest.mark.parametrize("record", PUBLISHED_RECORDS, ids=lambda r: r.__name__)
def test_consumer_with_only_fastavro_and_the_avsc_decodes_the_body(record: Type[faust.Record]) -> None:
    data = codec_for(record).dumps(SAMPLES[record])
    assert data[:2] == b"\xc3\x01"
    assert schemaless_reader(io.BytesIO(data[10:]), parse_schema(_read_avsc(record)), None) == SAMPLES[record]


def test_consumer_with_only_fastavro_and_the_avsc_accepts_the_fingerprint() -> None:
    # What a spec-following consumer checks before decoding: header == fingerprint of its .avsc.
    refused = [r.__name__ for r in PUBLISHED_RECORDS
               if codec_for(r).dumps(SAMPLES[r])[2:10] != _fingerprint(_read_avsc(r))]
    assert refused == []


def test_write_avsc_writes_the_schema(tmp_path: Any) -> None:
    path = write_avsc(PushMessage, tmp_path)
    assert path == tmp_path / "PushMessage.avsc"
    assert json.loads(path.read_text()) == avro_schema(PushMessage)
    assert path.read_text() == (AVSC_DIR / "PushMessage.avsc").read_text()
