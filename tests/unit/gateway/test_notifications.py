"""gateway.notifications: who may act for a user, request validation and the per-caller rate limit."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import Principal, may_subscribe
from gateway.channels import ChannelStore, channel_problem
from gateway.errors import Forbidden, InvalidInput, TooManyRequests
from gateway.limits import Buckets
from gateway.notifications import NotifyDesk, may_act_for
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


def test_the_notification_api_refuses_a_caller_over_its_rate_ops_included(tmp_path: Path) -> None:
    d = desk(tmp_path)
    d.limits = Buckets(1.0, clock=lambda: 0.0)
    ops = Principal("ops", "o-1")
    d._limit(ops)
    d._limit(ops)  # a burst of twice the rate
    with pytest.raises(TooManyRequests) as refused:
        d._limit(ops)
    assert refused.value.retry_after_s == pytest.approx(1.0)
