"""Notifications end to end on the real broker, to the session's local SMTP servers, SMS provider and web
push service: quiet hours that defer, critical bypass, opt-out, escalation cancelled on ack, retries,
a gone subscription, an expired offer, and a worker SIGKILL (dedupe, escalation, deferred sends)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import time
import uuid
from typing import Any, Callable

import aiohttp
import pytest

from infra.notify.redrive import redrive
from infra.sinks import Sinks
from schemas.avro import codec_for
from schemas.records import NotificationAudit
from schemas.topics import NOTIFICATIONS_AUDIT
from tests.integration.fixtures import Pipeline, Subscriber, end_offsets, read_topic

pytestmark = pytest.mark.integration
ALL = ["inapp", "webpush", "email", "sms"]


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_ms() -> int:
    return int(time.time() * 1000)


async def call(p: Pipeline, method: str, path: str, body: Any, role: str, sub: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{p.url}{path}", json=body, headers=p.headers(role, sub)) as resp:
            return resp.status, await resp.json()


class User:
    """A user with an e-mail address, a phone and a web push subscription on the session's push service."""

    def __init__(self, p: Pipeline, sinks: Sinks) -> None:
        self.p, self.sinks = p, sinks
        self.id = uid()
        self.email, self.phone = f"{self.id}@example.org", "+3584" + str(uuid.uuid4().int)[:8]
        self.subscription = sinks.subscription(self.id)

    async def setup(self, **prefs: Any) -> "User":
        code, body = await call(self.p, "PUT", f"/v1/users/{self.id}/preferences",
                                {"email": self.email, "phone": self.phone, **prefs}, "customer", self.id)
        assert code == 202, body
        code, body = await call(self.p, "POST", "/v1/push-subscriptions", {"subscription": self.subscription},
                                "customer", self.id)
        assert code == 202, body
        return self

    async def notify(self, key: str, **kw: Any) -> None:
        body = {"user_id": self.id, "idempotency_key": key, "category": "test.note", "title": f"hello {key}",
                "body": "a body", **kw}
        code, answer = await call(self.p, "POST", "/v1/notifications", body, "system", "shop-1")
        assert code == 202, answer

    def mail(self) -> list[dict[str, Any]]:
        return [m for m in self.sinks.mail if self.email in m["to"]]

    def sms(self) -> list[dict[str, Any]]:
        return [m for m in self.sinks.sms if m["to"] == self.phone]

    def pushes(self) -> list[dict[str, Any]]:
        return [m for m in self.sinks.pushes if m["subscription"] == self.id]

    def live(self) -> Subscriber:
        return Subscriber(self.p.url, self.p.token("customer", self.id))


async def until(what: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def notification(sub: Subscriber, timeout_s: float = 10, ack: bool = False) -> tuple[dict[str, Any], int]:
    """The next new in-app notification on the subscription, and when it arrived (epoch ms); `ack` it (the
    receipt), else it is resent until acked, and a resent one is not new."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = sub.__dict__.setdefault("seen", set())
    while True:
        u = await sub.next(max(0.05, deadline - time.monotonic()))
        if u["type"] == "notification" and u["seq"] not in seen:
            seen.add(u["seq"])
            if ack:
                await sub.sio.emit("ack", {"channel": u["channel"], "seq": u["seq"]}, namespace="/live")
            return u, now_ms()


LATE_MS = 2000  # how long after a quiet window's end its deferred sends may arrive


def audit(p: Pipeline, user_id: str, since: dict[int, int] | None = None) -> list[tuple[str, str | None, str | None]]:
    codec = codec_for(NotificationAudit)
    out = []
    for m in read_topic(p.settings, NOTIFICATIONS_AUDIT.name, since):
        a = codec.loads(m.value())
        if a["user_id"] == user_id:
            out.append((a["step"], a["channel"], a["reason"]))
    return out


def wall(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%H:%M:%S")


async def test_quiet_hours_defer_to_the_window_end_on_every_channel_and_critical_bypasses(
        pipeline: Pipeline, sinks: Sinks) -> None:
    u = await User(pipeline, sinks).setup()
    async with u.live() as sub:
        assert (await sub.subscribe(f"user:{u.id}"))["ok"]
        await u.notify("warm", priority="critical", channels=["inapp"])  # the path's first use is not timed
        assert (await notification(sub))[0]["data"]["title"] == "hello warm"
        end = (now_ms() // 1000 + 4) * 1000
        await u.setup(quiet_hours={"start": wall(end - 3_600_000), "end": wall(end), "tz": "UTC"})
        await u.notify("deferred", channels=ALL)
        sent = now_ms()
        await u.notify("urgent", priority="critical", channels=["inapp"])
        first, at = await notification(sub)
        # The goal is 500 ms; on this 2-core machine with every server it is not met (docs/notifications.md).
        assert first["data"]["title"] == "hello urgent" and at - sent < 3000
        deferred, at = await notification(sub, timeout_s=10)
        assert deferred["data"]["title"] == "hello deferred"
        # Never before the window ends; promptly after (the timer ticks every 250 ms; a loaded CI
        # machine once took 1,013 ms to get a web push through the local push service).
        assert end <= at <= end + LATE_MS
    await until(lambda: bool(u.mail() and u.sms() and u.pushes()), 3)
    for got in (u.mail()[0], u.sms()[0], u.pushes()[0]):
        assert end <= got["received_ts"] <= end + LATE_MS, (got, end)
    assert len(u.mail()) == len(u.sms()) == len(u.pushes()) == 1


async def test_an_opt_out_sends_nothing_on_that_channel_and_records_suppressed(pipeline: Pipeline,
                                                                               sinks: Sinks) -> None:
    u = await User(pipeline, sinks).setup(opt_out={"test.note": ["email"]})
    await u.notify("k1", channels=["inapp", "email", "webpush"])
    await until(lambda: bool(u.pushes()))
    await asyncio.sleep(1.0)
    assert u.mail() == []
    await until(lambda: ("suppressed", "email", "preference") in audit(pipeline, u.id), 5)


async def test_an_inapp_ack_cancels_the_sms_and_no_ack_gives_exactly_one_at_the_step(pipeline: Pipeline,
                                                                                     sinks: Sinks) -> None:
    acker, silent = await User(pipeline, sinks).setup(), await User(pipeline, sinks).setup()
    async with acker.live() as sub:
        assert (await sub.subscribe(f"user:{acker.id}"))["ok"]
        await silent.notify("arriving", category="ride.driver_arriving")
        t0 = now_ms()
        await acker.notify("arriving", category="ride.driver_arriving")
        note, _ = await notification(sub)
        await sub.sio.emit("ack", {"channel": f"user:{acker.id}", "seq": note["seq"]}, namespace="/live")
        step = t0 + int(pipeline.settings.notify_escalation_s * 1000)
        await until(lambda: bool(silent.sms()), pipeline.settings.notify_escalation_s + 3)
        assert step - 200 <= silent.sms()[0]["received_ts"] <= step + 1000
        await asyncio.sleep(1.5)
    assert acker.sms() == [] and len(silent.sms()) == 1
    assert ("cancelled", "sms", "acked") in audit(pipeline, acker.id)


async def test_smtp_451_twice_and_sms_503_three_times_deliver_once_and_audit_equals_the_sinks(
        pipeline: Pipeline, sinks: Sinks) -> None:
    u = await User(pipeline, sinks).setup()
    since = end_offsets(pipeline.settings, NOTIFICATIONS_AUDIT.name)
    sinks.script(f"smtp:{sinks.smtp_ports[0]}", ["451", "451"])
    sinks.script("sms", ["503", "503", "503"])
    await u.notify("retried", channels=["email", "sms", "webpush"])
    await until(lambda: bool(u.mail() and u.sms() and u.pushes()), 15)
    await asyncio.sleep(1.0)
    assert (len(u.mail()), len(u.sms()), len(u.pushes())) == (1, 1, 1)
    steps = audit(pipeline, u.id, since)
    assert sum(1 for s in steps if s[0] == "sent" and s[1] != "inapp") == 3  # what the three sinks received


async def test_a_410_removes_the_subscription(pipeline: Pipeline, sinks: Sinks) -> None:
    u = await User(pipeline, sinks).setup()
    sinks.script("push", ["410"])
    await u.notify("gone", channels=["webpush"])
    await until(lambda: any(s[0] == "removed" for s in audit(pipeline, u.id)), 10)
    await u.notify("after", channels=["webpush"])
    await until(lambda: ("suppressed", "webpush", "no subscription") in audit(pipeline, u.id), 10)
    assert u.pushes() == []


async def test_an_expired_driver_offer_is_never_delivered_late(pipeline: Pipeline, sinks: Sinks) -> None:
    u = await User(pipeline, sinks).setup()
    sinks.script("push", ["503:3"])  # the push service asks to wait 3 s: past the offer's expiry
    await u.notify("offer-1", category="driver.offer", priority="critical", expires_at=now_ms() + 1500,
                   channels=["webpush"])
    await until(lambda: ("expired", "webpush") in [s[:2] for s in audit(pipeline, u.id)], 10)
    assert u.pushes() == []


async def test_a_permanent_failure_is_dead_lettered_and_a_redrive_twice_delivers_once(pipeline: Pipeline,
                                                                                     sinks: Sinks) -> None:
    u = await User(pipeline, sinks).setup()
    sinks.script(f"smtp:{sinks.smtp_ports[0]}", ["550"])
    await u.notify("refused", channels=["email"])
    await until(lambda: any(s[:2] == ("failed", "email") for s in audit(pipeline, u.id)), 10)
    assert u.mail() == []
    first = await asyncio.to_thread(redrive, pipeline.settings)
    assert first.redriven >= 1
    await until(lambda: bool(u.mail()), 10)
    await asyncio.to_thread(redrive, pipeline.settings)
    await asyncio.sleep(1.5)
    assert len(u.mail()) == 1


async def test_a_worker_sigkill_loses_nothing_and_sends_nothing_twice(pipeline: Pipeline, sinks: Sinks) -> None:
    dup, ladder = await User(pipeline, sinks).setup(), await User(pipeline, sinks).setup()
    end = (now_ms() // 1000 + 7) * 1000
    deferred = await User(pipeline, sinks).setup(
        quiet_hours={"start": wall(end - 3_600_000), "end": wall(end), "tz": "UTC"})
    await dup.notify("same", channels=["email", "sms", "webpush"])
    t0 = now_ms()
    await ladder.notify("ladder", category="order.failed")  # in-app and e-mail now, the SMS a step later
    await deferred.notify("later", channels=["email", "sms"])
    # Killed once the first sends are committed (their audit `sent` is written with their ledger receipts),
    # while the ladder's SMS is pending and the deferred window is open: not inside the documented window
    # between a provider's accept and that commit (docs/notifications.md).
    await until(lambda: sum(1 for s in audit(pipeline, dup.id) if s[0] == "sent") == 3
                and ("sent", "email") in [s[:2] for s in audit(pipeline, ladder.id)], 10)
    assert now_ms() < t0 + pipeline.settings.notify_escalation_s * 1000 - 500, "too slow to kill before the step"
    pipeline.stop_worker(signal.SIGKILL)
    await dup.notify("same", channels=["email", "sms", "webpush"])  # while the worker is down
    await asyncio.to_thread(pipeline.start_worker)
    await dup.notify("same", channels=["email", "sms", "webpush"])
    await until(lambda: bool(ladder.sms() and deferred.mail() and deferred.sms()), 20)
    await asyncio.sleep(1.5)
    assert (len(dup.mail()), len(dup.sms()), len(dup.pushes())) == (1, 1, 1)
    assert (len(ladder.mail()), len(ladder.sms())) == (1, 1)
    assert (len(deferred.mail()), len(deferred.sms())) == (1, 1)
    assert deferred.mail()[0]["received_ts"] >= end
