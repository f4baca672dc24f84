"""agents.notify_flow: a user's notifications decided record by record (pure)."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from agents.commands import notification_request
from agents.notify_flow import NotifyPolicy, NotifyStep, apply_notification, next_due, notification_id
from schemas import typed

T0 = int(dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp() * 1000)
POLICY = NotifyPolicy(escalation_ms=20_000, dedupe_window_ms=3_600_000, inbox_max=5, caps={"sms": 2})
PREFS = {"email": "a@example.org", "phone": "+358401234567"}
SUB = json.dumps({"endpoint": "http://127.0.0.1:1/push/a", "keys": {"p256dh": "x", "auth": "y"}})


class User:
    """One user's state through a sequence of records."""

    def __init__(self, prefs: dict[str, Any] | None = None, subscribed: bool = True) -> None:
        self.state: typed.NotificationUser | None = None
        self.steps: list[NotifyStep] = []
        self.apply("PREFERENCES", T0 - 1000, payload=json.dumps(prefs if prefs is not None else PREFS))
        if subscribed:
            self.apply("SUBSCRIBE", T0 - 1000, payload=SUB)

    def apply(self, op: str, now: int, **kw: Any) -> NotifyStep:
        step = apply_notification(self.state, notification_request(op, "u1", now, **kw), POLICY, now)
        if step.user is not None:
            self.state = step.user
        self.steps.append(step)
        return step

    def request(self, now: int = T0, key: str = "k1", **kw: Any) -> NotifyStep:
        kw = {"category": "ride.driver_arriving", "title": "Your driver is near", "body": "2 min", **kw}
        return self.apply("REQUEST", now, idempotency_key=key, **kw)


def channels(step: NotifyStep) -> list[str]:
    return sorted({*("inapp" for p in step.pushes if p["type"] == "notification"), *(d["channel"] for d in step.deliveries)})


def steps_of(step: NotifyStep) -> list[tuple[str, str | None]]:
    return [(a["step"], a["channel"]) for a in step.audits]


def test_the_first_step_goes_at_once_and_the_escalation_later_unless_acked() -> None:
    u = User()
    first = u.request()
    assert channels(first) == ["inapp", "webpush"]
    assert u.state is not None and next_due(u.state) == T0 + 20_000
    assert channels(u.apply("TICK", T0 + 19_999)) == []
    assert channels(u.apply("TICK", T0 + 20_000)) == ["sms"]
    assert u.state is not None and next_due(u.state) == 0


def test_an_inapp_ack_cancels_the_escalation() -> None:
    u = User()
    u.request()
    seq = u.state["inbox"][0]["seq"] if u.state else 0
    ack = u.apply("ACK", T0 + 5_000, seq=seq)
    assert ("delivered", "inapp") in steps_of(ack) and ("cancelled", "sms") in steps_of(ack)
    assert channels(u.apply("TICK", T0 + 20_000)) == []


def test_the_same_key_is_one_notification() -> None:
    u = User()
    u.request()
    again = u.request(T0 + 1000)
    assert again.outcome == "duplicate" and channels(again) == [] and steps_of(again) == [("duplicate", None)]


def test_an_opt_out_sends_nothing_on_that_channel_and_says_suppressed() -> None:
    u = User({**PREFS, "opt_out": {"order.delivered": ["email"]}})
    step = u.request(category="order.delivered", title="Delivered")
    assert channels(step) == ["inapp"]
    assert ("suppressed", "email") in steps_of(step)


def test_quiet_hours_defer_to_the_window_end_and_critical_bypasses() -> None:
    u = User({**PREFS, "quiet_hours": {"start": "11:00", "end": "13:00", "tz": "UTC"}})
    step = u.request(category="order.confirmed", title="Confirmed")
    assert channels(step) == [] and ("deferred", "email") in steps_of(step)
    end = T0 + 3_600_000
    assert u.state is not None and next_due(u.state) == end
    assert channels(u.apply("TICK", end - 1)) == []
    assert channels(u.apply("TICK", end)) == ["email", "inapp"]
    crit = u.request(key="k2", category="order.confirmed", title="Now", priority="critical")
    assert channels(crit) == ["email", "inapp"]


def test_a_deferred_notification_that_expires_first_is_recorded_expired() -> None:
    u = User({**PREFS, "quiet_hours": {"start": "11:00", "end": "13:00", "tz": "UTC"}})
    u.request(category="order.confirmed", title="Soon stale", expires_at=T0 + 60_000)
    assert u.state is not None and next_due(u.state) == T0 + 60_000
    late = u.apply("TICK", T0 + 60_000)
    assert channels(late) == [] and ("expired", "inapp") in steps_of(late)


def test_an_expired_offer_is_never_sent() -> None:
    u = User()
    step = u.request(T0, category="driver.offer", title="New offer", priority="critical", expires_at=T0)
    assert channels(step) == [] and ("expired", "inapp") in steps_of(step)


def test_the_cap_holds_non_critical_sms_back() -> None:
    u = User()
    for i in range(4):
        u.request(T0 + i, key=f"k{i}", channels=["sms"], title="t")
    sms = sum(1 for s in u.steps for d in s.deliveries if d["channel"] == "sms")
    assert sms == 2
    assert sum(1 for s in u.steps for a in s.audits if a["step"] == "suppressed" and a["reason"] == "rate cap") == 2


def test_a_gone_subscription_is_removed_and_no_address_is_suppressed() -> None:
    u = User({}, subscribed=True)
    step = u.request()
    assert [d["channel"] for d in step.deliveries] == ["webpush"]
    nid = notification_id("u1", "k1")
    u.apply("RESULT", T0 + 1, result="gone", notification_id=nid, payload=SUB, channel="webpush")
    assert u.state is not None and u.state["subscriptions"] == []
    again = u.request(T0 + 2, key="k2")
    assert ("suppressed", "webpush") in steps_of(again)
    tick = u.apply("TICK", T0 + 20_002)
    assert ("suppressed", "sms") in steps_of(tick)


def test_read_and_the_inbox_state() -> None:
    u = User()
    u.request()
    read = u.apply("READ", T0 + 1, notification_id="*")
    inbox = [json.loads(p["data"]) for p in read.pushes if p["type"] == "inbox"][-1]
    assert inbox["unread"] == 0 and inbox["items"][0]["read"] is True


def test_bad_preferences_are_refused() -> None:
    u = User()
    step = u.apply("PREFERENCES", T0, payload=json.dumps({"quiet_hours": {"start": "x", "end": "1", "tz": "UTC"}}))
    assert step.refusal is not None
