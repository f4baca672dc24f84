"""gateway.notifications: who may act for a user, request validation and the per-caller rate limit."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import Principal, may_subscribe
from gateway.channels import ChannelStore, channel_problem
from gateway.errors import Forbidden, InvalidInput, TooManyRequests
from gateway.notifications import NotifyDesk, _Buckets, may_act_for
from infra.settings import Settings

SYSTEM = Principal("system", "shop-1")


def desk(tmp_path: Path) -> NotifyDesk:
    return NotifyDesk(Settings(state_dir=tmp_path), ChannelStore(max_len=10, max_age_ms=60_000))


def test_a_users_channel_is_its_own_or_ops() -> None:
    assert channel_problem("user:u-1", 9) is None
    assert may_subscribe(Principal("customer", "u-1"), "user:u-1", lambda r: None)
    assert may_subscribe(Principal("driver", "u-1"), "user:u-1", lambda r: None)
    assert not may_subscribe(Principal("customer", "u-2"), "user:u-1", lambda r: None)
    assert may_subscribe(Principal("ops", "o"), "user:u-1", lambda r: None)
    assert may_act_for(Principal("rider", "u-1"), "u-1") and not may_act_for(SYSTEM, "u-1")


async def test_only_systems_and_ops_request_and_requests_are_validated(tmp_path: Path) -> None:
    d = desk(tmp_path)
    with pytest.raises(Forbidden):
        await d.request(Principal("customer", "u-1"), {"user_id": "u-1"})
    with pytest.raises(InvalidInput) as bad:
        await d.request(SYSTEM, {"user_id": "u 1", "category": "x", "priority": "urgent", "channels": ["fax"],
                                 "color": "red"})
    fields = {p["field"] for p in bad.value.problems}
    assert {"user_id", "priority", "channels", "color", "idempotency_key", "title"} <= fields


async def test_preferences_are_checked_before_they_are_produced(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        await desk(tmp_path).put_preferences(Principal("customer", "u-1"), "u-1",
                                             {"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Nowhere/X"}})
    with pytest.raises(Forbidden):
        await desk(tmp_path).put_preferences(Principal("customer", "u-2"), "u-1", {})


def test_each_caller_has_a_token_bucket() -> None:
    t = [0.0]
    b = _Buckets(5.0, clock=lambda: t[0])
    for _ in range(10):
        b.take("a")
    with pytest.raises(TooManyRequests):
        b.take("a")
    b.take("b")  # another caller is not held back
    t[0] += 0.2
    b.take("a")
