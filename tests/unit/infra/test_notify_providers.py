"""infra.notify against the real local servers (infra.sinks): SMTP, Twilio's Messages API, web push."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from infra.notify.channels import channels_from
from infra.notify.providers import Channel
from infra.settings import Settings
from infra.sinks import Sinks, sinks_running
from schemas import typed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def sinks() -> AsyncIterator[Sinks]:
    async with sinks_running([free_port(), free_port()], free_port()) as s:
        yield s


OPEN: list[Channel] = []


@pytest.fixture(autouse=True)
async def closed() -> AsyncIterator[None]:
    """Every channel a test made is closed after it (kept connections and sessions)."""
    yield
    while OPEN:
        await OPEN.pop().close()


def channels(sinks: Sinks, tmp_path: Path, smtp: list[int] | None = None, **kw: object) -> dict[str, Channel]:
    ports = smtp if smtp is not None else sinks.smtp_ports[:1]
    settings = Settings(state_dir=tmp_path, notify_smtp_servers=",".join(f"127.0.0.1:{p}" for p in ports),
                        notify_sms_base_urls=sinks.sms_base, notify_retry_first_s=0.2, notify_retry_max_s=1.0,
                        **kw)  # type: ignore[arg-type]
    made = channels_from(settings)
    OPEN.extend(made.values())
    return made


def now_ms() -> int:
    return int(time.time() * 1000)


def delivery(channel: str, address: str, **kw: object) -> typed.NotificationDelivery:
    d: typed.NotificationDelivery = {
        "notification_id": "0123456789abcdef0123456789abcdef", "idempotency_key": "k-1", "user_id": "u-1",
        "channel": channel, "address": address, "category": "order.arriving", "priority": "normal",
        "title": "Arriving <soon>", "body": "Your courier is 2 min away", "data": json.dumps({"link": "http://x/t"}),
        "expires_at": 0, "event_ts": now_ms(), "decided_ts": now_ms()}
    d.update(kw)  # type: ignore[typeddict-item]
    return d


async def test_smtp_451_twice_then_250_delivers_once_with_backoff_and_the_message_id(sinks: Sinks,
                                                                                     tmp_path: Path) -> None:
    port = sinks.smtp_ports[0]
    sinks.script(f"smtp:{port}", ["451", "451"])
    out = await channels(sinks, tmp_path)["email"].send(delivery("email", "a@example.org"), now_ms)
    assert (out.status, out.attempts) == ("sent", 3)
    assert len(sinks.mail) == 1
    mail = sinks.mail[0]
    assert mail["message_id"] == "<0123456789abcdef0123456789abcdef@livetrack.local>"
    assert "&lt;soon&gt;" in mail["html"] and "Your courier" in mail["text"]  # autoescaped HTML, plain text
    gaps = [b["ts"] - a["ts"] for a, b in zip(sinks.tries, sinks.tries[1:])]
    assert 160 <= gaps[0] <= 400 and 320 <= gaps[1] <= 700  # 0.2 s then 0.4 s, +-20 % jitter (+ the round trip)


async def test_smtp_550_is_permanent(sinks: Sinks, tmp_path: Path) -> None:
    sinks.script(f"smtp:{sinks.smtp_ports[0]}", ["550"])
    out = await channels(sinks, tmp_path)["email"].send(delivery("email", "a@example.org"), now_ms)
    assert (out.status, out.attempts) == ("failed", 1) and not sinks.mail


async def test_with_the_primary_smtp_down_the_secondary_gets_it_within_2_s(sinks: Sinks, tmp_path: Path) -> None:
    down = free_port()  # nothing listens there
    started = time.monotonic()
    out = await channels(sinks, tmp_path, smtp=[down, sinks.smtp_ports[1]],
                         notify_retry_attempts=2)["email"].send(delivery("email", "a@example.org"), now_ms)
    assert out.status == "sent" and out.provider.endswith(str(sinks.smtp_ports[1]))
    assert time.monotonic() - started < 2.0 and len(sinks.mail) == 1


async def test_sms_503_three_times_then_201_delivers_once(sinks: Sinks, tmp_path: Path) -> None:
    sinks.script("sms", ["503", "503", "503"])
    out = await channels(sinks, tmp_path)["sms"].send(delivery("sms", "+358401234567"), now_ms)
    assert (out.status, out.attempts) == ("sent", 4) and out.ref.startswith("SM")
    assert [s["to"] for s in sinks.sms] == ["+358401234567"]


async def test_sms_retry_after_2_delays_the_next_try_by_2_s(sinks: Sinks, tmp_path: Path) -> None:
    sinks.script("sms", ["429:2"])
    out = await channels(sinks, tmp_path)["sms"].send(delivery("sms", "+358401234567"), now_ms)
    assert out.status == "sent"
    assert sinks.tries[1]["ts"] - sinks.tries[0]["ts"] >= 2000


async def test_sms_invalid_number_is_permanent_and_a_timeout_is_unknown(sinks: Sinks, tmp_path: Path) -> None:
    sinks.script("sms", ["400"])
    chans = channels(sinks, tmp_path, notify_provider_timeout_s=0.5)
    assert (await chans["sms"].send(delivery("sms", "+1"), now_ms)).status == "failed"
    sinks.script("sms", ["hang"])
    out = await chans["sms"].send(delivery("sms", "+358401234567"), now_ms)
    assert (out.status, out.attempts) == ("unknown", 1)  # never sent blindly again


async def test_web_push_is_decrypted_and_its_vapid_ttl_urgency_topic_check_out(sinks: Sinks, tmp_path: Path) -> None:
    sub = json.dumps(sinks.subscription())
    d = delivery("webpush", sub, priority="critical", expires_at=now_ms() + 30_000)
    out = await channels(sinks, tmp_path)["webpush"].send(d, now_ms)
    assert out.status == "sent", out
    push = sinks.pushes[0]
    assert push["payload"]["title"] == "Arriving <soon>" and push["payload"]["notification_id"] == d["notification_id"]
    assert 28 <= push["ttl"] <= 30 and push["urgency"] == "high" and push["topic"] == d["notification_id"]
    assert push["vapid_sub"] == "mailto:ops@livetrack.local"


async def test_web_push_410_is_gone(sinks: Sinks, tmp_path: Path) -> None:
    sub = json.dumps(sinks.subscription())
    sinks.script("push", ["410"])
    out = await channels(sinks, tmp_path)["webpush"].send(delivery("webpush", sub), now_ms)
    assert (out.status, out.attempts) == ("gone", 1) and not sinks.pushes


async def test_an_expired_send_is_never_tried(sinks: Sinks, tmp_path: Path) -> None:
    out = await channels(sinks, tmp_path)["email"].send(delivery("email", "a@b.c", expires_at=now_ms() - 1), now_ms)
    assert out.status == "expired" and not sinks.tries
