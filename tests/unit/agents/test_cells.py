"""agents.cells.apply_membership: a cell's drivers after one membership message."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from agents.cells import apply_membership
from schemas.avro import codec_for
from schemas.records import CellDrivers

TTL = 90_000
T0 = 1_732_170_000_000
CELL = "8928308280fffff"


def _m(driver_id: str, op: str, ts: int, status: str = "AVAILABLE") -> dict[str, Any]:
    """A decoded CellMembership for CELL."""
    return {"cell": CELL, "driver_id": driver_id, "op": op, "status": status, "ts": ts}


def _apply(prev: dict[str, Any] | None, m: dict[str, Any], ttl_ms: int = TTL) -> dict[str, Any]:
    """apply_membership, checking the result encodes as a CellDrivers and the input is untouched."""
    before = copy.deepcopy(prev)
    cell = apply_membership(prev, m, ttl_ms)
    assert prev == before
    codec = codec_for(CellDrivers)
    assert codec.loads(codec.dumps(cell)) == cell
    return cell


def _cell(drivers: dict[str, int], available: dict[str, int] | None = None) -> dict[str, Any]:
    return {"drivers": drivers, "available": dict(drivers) if available is None else available}


@pytest.mark.parametrize("op", ["JOIN", "REFRESH"])
def test_available_driver_is_added_to_both(op: str) -> None:
    assert _apply(None, _m("d-1", op, T0)) == _cell({"d-1": T0})


@pytest.mark.parametrize("status", ["OFFLINE", "EN_ROUTE", "ON_TRIP"])
def test_non_available_driver_is_in_drivers_only(status: str) -> None:
    assert _apply(None, _m("d-1", "JOIN", T0, status)) == _cell({"d-1": T0}, {})


def test_join_keeps_the_other_drivers() -> None:
    cell = _apply(_cell({"d-1": T0}), _m("d-2", "JOIN", T0 + 5, "ON_TRIP"))
    assert cell == _cell({"d-1": T0, "d-2": T0 + 5}, {"d-1": T0})


def test_refresh_moves_the_last_seen_time() -> None:
    cell = _apply(_cell({"d-1": T0, "d-2": T0}), _m("d-1", "REFRESH", T0 + 30_000))
    assert cell == _cell({"d-1": T0 + 30_000, "d-2": T0})


def test_no_longer_available_driver_leaves_available_only() -> None:
    cell = _apply(_cell({"d-1": T0, "d-2": T0}), _m("d-1", "REFRESH", T0 + 1000, "ON_TRIP"))
    assert cell == _cell({"d-1": T0 + 1000, "d-2": T0}, {"d-2": T0})


def test_available_again_rejoins_available() -> None:
    cell = _apply(_cell({"d-1": T0}, {}), _m("d-1", "REFRESH", T0 + 1000))
    assert cell == _cell({"d-1": T0 + 1000})


def test_leave_removes_from_both() -> None:
    cell = _apply(_cell({"d-1": T0, "d-2": T0}), _m("d-1", "LEAVE", T0 + 1000))
    assert cell == _cell({"d-2": T0})


def test_leave_of_an_unknown_driver_changes_nothing() -> None:
    assert _apply(_cell({"d-1": T0}), _m("d-9", "LEAVE", T0 + 1)) == _cell({"d-1": T0})
    assert _apply(None, _m("d-9", "LEAVE", T0)) == _cell({})


def test_late_leave_does_not_evict_a_newer_join() -> None:
    joined = _apply(_cell({}), _m("d-1", "JOIN", T0 + 5000))
    assert _apply(joined, _m("d-1", "LEAVE", T0 + 4000)) == _cell({"d-1": T0 + 5000})


def test_late_join_does_not_move_last_seen_back() -> None:
    cell = _apply(_cell({"d-1": T0 + 5000}), _m("d-1", "JOIN", T0 + 1000))
    assert cell["drivers"] == {"d-1": T0 + 5000}


def test_silent_drivers_are_pruned_relative_to_the_message_ts() -> None:
    now = T0 + 200_000
    prev = _cell({"old": now - TTL, "fresh": now - TTL + 1, "gone": T0},
                 {"old": now - TTL, "fresh": now - TTL + 1})
    cell = _apply(prev, _m("d-1", "JOIN", now))
    assert cell == _cell({"fresh": now - TTL + 1, "d-1": now})


def test_pruning_follows_event_time_not_the_clock() -> None:
    # An old message prunes against its own ts: entries within the ttl of it stay.
    prev = _cell({"d-1": T0, "d-2": T0 + 10})
    assert _apply(prev, _m("d-3", "LEAVE", T0 + 20)) == prev


def test_a_leave_also_prunes() -> None:
    prev = _cell({"stale": T0, "d-1": T0 + TTL})
    assert _apply(prev, _m("d-1", "LEAVE", T0 + TTL + 1)) == _cell({})


def test_ttl_is_the_callers() -> None:
    prev = _cell({"d-1": T0})
    assert _apply(prev, _m("d-2", "JOIN", T0 + 10_000), ttl_ms=10_000) == _cell({"d-2": T0 + 10_000})
    assert _apply(prev, _m("d-2", "JOIN", T0 + 10_000), ttl_ms=10_001) == _cell({"d-1": T0, "d-2": T0 + 10_000})
