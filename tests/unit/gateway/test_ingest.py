"""gateway.ingest: a request body becomes LocationEvents, or every reason it is refused."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import GatewayError, InvalidInput, PayloadTooLarge
from gateway.ingest import parse_locations
from schemas.records import LocationEvent

T0 = 1_732_170_000_000
NOW = T0 + 250  # the server's received_ts


def _item(driver_id: str = "d-1", seq: int = 1, **changes: Any) -> dict[str, Any]:
    """A valid API item, with `changes` applied."""
    return {"driver_id": driver_id, "seq": seq, "lat": 37.7749, "lng": -122.4194, "ts": T0 + seq, **changes}


def _parse(body: Any, max_items: int = 10) -> list[LocationEvent]:
    return parse_locations(body, max_items=max_items, received_ts=NOW)


def _problems(body: Any, max_items: int = 10) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as info:
        _parse(body, max_items)
    return info.value.problems


def test_single_object() -> None:
    (event,) = _parse(_item(seq=4))
    assert isinstance(event, LocationEvent)
    assert event.asdict() == {
        "driver_id": "d-1", "seq": 4, "lat": 37.7749, "lng": -122.4194, "fix_ts": T0 + 4,
        "received_ts": NOW, "accuracy": None, "speed": None, "bearing": None,
    }


def test_array_keeps_order_and_stamps_every_event() -> None:
    events = _parse([_item("d-1", 1), _item("d-2", 9), _item("d-1", 2)])
    assert [(e.driver_id, e.seq, e.fix_ts) for e in events] == [("d-1", 1, T0 + 1), ("d-2", 9, T0 + 9),
                                                                 ("d-1", 2, T0 + 2)]
    assert {e.received_ts for e in events} == {NOW}


def test_optional_fields_are_carried_as_floats() -> None:
    (event,) = _parse(_item(accuracy=5, speed=12.5, bearing=90))
    assert (event.accuracy, event.speed, event.bearing) == (5.0, 12.5, 90.0)
    assert all(type(v) is float for v in (event.accuracy, event.speed, event.bearing))


def test_integer_coordinates_become_floats() -> None:
    (event,) = _parse(_item(lat=37, lng=-122))
    assert (event.lat, event.lng) == (37.0, -122.0)
    assert type(event.lat) is float and type(event.lng) is float


def test_explicit_null_optionals() -> None:
    (event,) = _parse(_item(speed=None, bearing=None, accuracy=None))
    assert (event.accuracy, event.speed, event.bearing) == (None, None, None)


def test_one_bad_item_refuses_the_whole_request_and_every_bad_item_is_named() -> None:
    body = [
        _item("d-1", 1),
        _item("d-2", 2, lat=91.0),
        _item("d-3", 3),
        {"driver_id": "", "seq": True, "lat": 1.0, "lng": 2.0},
        _item("d-5", 5, fix_ts=T0, received_ts=T0),
    ]
    with pytest.raises(InvalidInput) as info:
        _parse(body)
    problems = sorted(info.value.problems, key=lambda p: (p["index"], p["field"]))
    assert problems == [
        {"index": 1, "field": "lat", "reason": "must be <= 90"},
        {"index": 3, "field": "driver_id", "reason": "must not be empty"},
        {"index": 3, "field": "seq", "reason": "must be an integer"},
        {"index": 3, "field": "ts", "reason": "is required"},
        {"index": 4, "field": "fix_ts", "reason": "unknown field"},
        {"index": 4, "field": "received_ts", "reason": "unknown field"},
    ]
    assert str(info.value) == "3 invalid location(s)"
    assert info.value.status == 400
    assert info.value.body() == {"error": "3 invalid location(s)", "problems": info.value.problems}


def test_single_bad_object_is_index_zero() -> None:
    assert _problems(_item(lng="west")) == [{"index": 0, "field": "lng", "reason": "must be a number"}]


@pytest.mark.parametrize("bad", ["d-1", 7, None, [_item()], True])
def test_non_object_item_is_reported(bad: Any) -> None:
    assert _problems([_item(), bad]) == [{"index": 1, "field": "", "reason": "must be a JSON object"}]


@pytest.mark.parametrize("body", ["d-1", 7, None])
def test_non_object_body_is_reported(body: Any) -> None:
    assert _problems(body) == [{"index": 0, "field": "", "reason": "must be a JSON object"}]


def test_client_cannot_set_received_ts() -> None:
    assert _problems(_item(received_ts=T0)) == [{"index": 0, "field": "received_ts", "reason": "unknown field"}]


def test_empty_array_is_invalid() -> None:
    with pytest.raises(InvalidInput) as info:
        _parse([])
    assert info.value.problems == [{"index": None, "field": "", "reason": "empty array"}]


def test_exactly_max_items_is_accepted() -> None:
    assert len(_parse([_item(seq=i) for i in range(5)], max_items=5)) == 5


def test_more_than_max_items_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        _parse([_item(seq=i) for i in range(6)], max_items=5)
    assert info.value.status == 413
    assert "6" in str(info.value) and "5" in str(info.value)


def test_size_is_checked_before_items_are_validated() -> None:
    with pytest.raises(PayloadTooLarge):
        _parse([{"bad": True}] * 3, max_items=2)


def test_gateway_errors_share_one_root() -> None:
    assert issubclass(InvalidInput, GatewayError) and issubclass(PayloadTooLarge, GatewayError)
