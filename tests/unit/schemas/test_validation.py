"""schemas.validation: untrusted input checked against a Record's declaration."""
from __future__ import annotations

import math
from typing import Any

import pytest

from schemas.records import DriverStatusChanged, LocationEvent
from schemas.validation import FieldError, field_errors, range_errors

T0 = 1_732_170_000_000
REQUIRED = ("driver_id", "seq", "lat", "lng", "fix_ts", "received_ts")
OPTIONAL = ("accuracy", "speed", "bearing")
# As the gateway calls it: the API names the fix time `ts`, the server stamps `received_ts`.
API_NAMES = {"fix_ts": "ts"}
API_SKIP = frozenset({"received_ts"})


def _event(**changes: Any) -> dict[str, Any]:
    """A valid LocationEvent dict (record field names), with `changes` applied."""
    base: dict[str, Any] = {"driver_id": "d-1", "seq": 7, "lat": 37.7749, "lng": -122.4194,
                            "fix_ts": T0, "received_ts": T0 + 5}
    return {**base, **changes}


def _api(**changes: Any) -> dict[str, Any]:
    """A valid ingest API item (`ts`, no `received_ts`), with `changes` applied."""
    base: dict[str, Any] = {"driver_id": "d-1", "seq": 7, "lat": 37.7749, "lng": -122.4194, "ts": T0}
    return {**base, **changes}


def _errors(data: Any) -> list[FieldError]:
    return field_errors(LocationEvent, data)


# --- field_errors: presence ------------------------------------------------------------------------


def test_valid_event_has_no_errors() -> None:
    assert _errors(_event()) == []
    assert _errors(_event(accuracy=5.0, speed=12.5, bearing=359.9)) == []


def test_ints_are_numbers() -> None:
    assert _errors(_event(lat=37, lng=-122, speed=0, bearing=360)) == []


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field(field: str) -> None:
    data = _event()
    del data[field]
    assert _errors(data) == [FieldError(field, "is required")]


@pytest.mark.parametrize("field", REQUIRED)
def test_null_required_field_is_missing(field: str) -> None:
    assert _errors(_event(**{field: None})) == [FieldError(field, "is required")]


@pytest.mark.parametrize("field", OPTIONAL)
def test_optional_field_may_be_absent_or_null(field: str) -> None:
    assert _errors(_event(**{field: None})) == []


@pytest.mark.parametrize("data", [[], "d-1", 7, None, [_event()]])
def test_non_object_is_one_error(data: Any) -> None:
    assert _errors(data) == [FieldError("", "must be a JSON object")]


# --- field_errors: types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("seq", True, "must be an integer"),
    ("seq", False, "must be an integer"),
    ("seq", 7.0, "must be an integer"),
    ("seq", "7", "must be an integer"),
    ("fix_ts", 1.5, "must be an integer"),
    ("received_ts", [T0], "must be an integer"),
    ("lat", True, "must be a number"),
    ("lat", "37.7", "must be a number"),
    ("lng", {"deg": 1}, "must be a number"),
    ("accuracy", False, "must be a number"),
    ("speed", "fast", "must be a number"),
    ("lat", math.nan, "must be finite"),
    ("lng", math.inf, "must be finite"),
    ("lng", -math.inf, "must be finite"),
    ("speed", math.nan, "must be finite"),
    ("bearing", math.inf, "must be finite"),
    ("driver_id", 7, "must be a string"),
    ("driver_id", ["d-1"], "must be a string"),
])
def test_wrong_type(field: str, value: Any, reason: str) -> None:
    assert _errors(_event(**{field: value})) == [FieldError(field, reason)]


def test_a_wrong_type_is_not_also_range_checked() -> None:
    # "999" is out of range as a number, but the only problem reported is its type.
    assert _errors(_event(lat="999")) == [FieldError("lat", "must be a number")]


# --- field_errors: ranges and lengths --------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("lat", -90.0001, "must be >= -90"),
    ("lat", 90.5, "must be <= 90"),
    ("lng", -180.1, "must be >= -180"),
    ("lng", 181, "must be <= 180"),
    ("seq", -1, "must be >= 0"),
    ("seq", 2**62 + 1, f"must be <= {2**62}"),
    ("fix_ts", -1, "must be >= 0"),
    ("received_ts", -5, "must be >= 0"),
    ("accuracy", -0.5, "must be >= 0"),
    ("speed", 1000.5, "must be <= 1000"),
    ("bearing", 360.01, "must be <= 360"),
    ("driver_id", "", "must not be empty"),
    ("driver_id", "x" * 65, "must have at most 64 characters"),
])
def test_out_of_range(field: str, value: Any, reason: str) -> None:
    assert _errors(_event(**{field: value})) == [FieldError(field, reason)]


@pytest.mark.parametrize(("field", "value"), [
    ("lat", -90), ("lat", 90), ("lng", -180), ("lng", 180), ("seq", 0), ("seq", 2**62), ("fix_ts", 0),
    ("driver_id", "x"), ("driver_id", "x" * 64), ("bearing", 0), ("bearing", 360), ("speed", 1000),
    ("accuracy", 100_000),
])
def test_bounds_are_inclusive(field: str, value: Any) -> None:
    assert _errors(_event(**{field: value})) == []


def test_choices() -> None:
    ok = {"driver_id": "d-1", "status": "ON_TRIP", "ts": T0}
    assert field_errors(DriverStatusChanged, ok) == []
    assert field_errors(DriverStatusChanged, {**ok, "status": "on_trip"}) == [
        FieldError("status", "must be one of OFFLINE, AVAILABLE, EN_ROUTE, ON_TRIP, ON_BREAK")
    ]
    assert field_errors(DriverStatusChanged, {**ok, "status": 1}) == [FieldError("status", "must be a string")]


# --- field_errors: unknown fields, and everything at once ------------------------------------------


def test_unknown_fields_are_reported_by_name() -> None:
    assert _errors(_event(altitude=12.0, Lat=1.0)) == [
        FieldError("altitude", "unknown field"), FieldError("Lat", "unknown field"),
    ]


def test_every_problem_of_an_item_is_reported() -> None:
    data = {"seq": True, "lat": 91.0, "lng": math.nan, "fix_ts": T0, "received_ts": T0, "extra": 1}
    assert sorted(_errors(data), key=lambda e: e.field) == [
        FieldError("driver_id", "is required"),
        FieldError("extra", "unknown field"),
        FieldError("lat", "must be <= 90"),
        FieldError("lng", "must be finite"),
        FieldError("seq", "must be an integer"),
    ]


# --- names and skip, as the gateway uses them ------------------------------------------------------


def _api_errors(data: Any) -> list[FieldError]:
    return field_errors(LocationEvent, data, skip=API_SKIP, names=API_NAMES)


def test_api_item_is_valid() -> None:
    assert _api_errors(_api()) == []
    assert _api_errors(_api(speed=3.0, bearing=90.0, accuracy=8.0)) == []


def test_renamed_field_is_reported_by_the_callers_name() -> None:
    data = _api()
    del data["ts"]
    assert _api_errors(data) == [FieldError("ts", "is required")]
    assert _api_errors(_api(ts=-1)) == [FieldError("ts", "must be >= 0")]
    assert _api_errors(_api(ts="now")) == [FieldError("ts", "must be an integer")]


def test_the_record_name_of_a_renamed_field_is_unknown() -> None:
    data = _api(fix_ts=T0)
    del data["ts"]
    assert _api_errors(data) == [FieldError("fix_ts", "unknown field"), FieldError("ts", "is required")]


def test_skipped_field_is_neither_required_nor_accepted() -> None:
    assert _api_errors(_api()) == []  # no received_ts: fine
    assert _api_errors(_api(received_ts=T0)) == [FieldError("received_ts", "unknown field")]


def test_names_and_skip_do_not_leak_into_other_calls() -> None:
    assert _api_errors(_api()) == []
    # The plain call still wants the record's own names and the server field.
    assert sorted(_errors(_api()), key=lambda e: e.field) == [
        FieldError("fix_ts", "is required"), FieldError("received_ts", "is required"),
        FieldError("ts", "unknown field"),
    ]
    assert field_errors(LocationEvent, _api(), names=API_NAMES) == [FieldError("received_ts", "is required")]


# --- range_errors ----------------------------------------------------------------------------------


def test_range_errors_of_a_valid_event() -> None:
    assert range_errors(LocationEvent, _event(speed=3.0)) == []


def test_range_errors_reports_constraints() -> None:
    data = _event(lat=-91.0, lng=200.0, seq=-3, driver_id="x" * 65, bearing=400.0)
    assert sorted(range_errors(LocationEvent, data), key=lambda e: e.field) == [
        FieldError("bearing", "must be <= 360"),
        FieldError("driver_id", "must have at most 64 characters"),
        FieldError("lat", "must be >= -90"),
        FieldError("lng", "must be <= 180"),
        FieldError("seq", "must be >= 0"),
    ]
    assert range_errors(LocationEvent, _event(driver_id="")) == [FieldError("driver_id", "must not be empty")]


def test_range_errors_reports_missing_required_fields() -> None:
    data = _event(accuracy=None)
    del data["received_ts"]
    assert range_errors(LocationEvent, data) == [FieldError("received_ts", "is required")]


def test_range_errors_checks_neither_unknown_fields_nor_types_nor_choices() -> None:
    # A decoded Avro dict: its types are already right; its keys are the schema's.
    assert range_errors(LocationEvent, _event(extra="x", seq=True)) == []
    assert range_errors(DriverStatusChanged, {"driver_id": "d-1", "status": "BOGUS", "ts": T0}) == []
    assert field_errors(DriverStatusChanged, {"driver_id": "d-1", "status": "BOGUS", "ts": T0}) != []


@pytest.mark.parametrize("field", ["lat", "speed"])
def test_range_errors_rejects_nan(field: str) -> None:
    assert range_errors(LocationEvent, _event(**{field: math.nan})) != []
