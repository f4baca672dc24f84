"""Notifications through the engine to the local sinks: latency at a rate, throughput at saturation.

A fresh broker, worker and gateway (bench.harness), and this process's local SMTP server, SMS
provider and web push service (infra.sinks). U users, each with an e-mail address, a phone, a web
push subscription and a /live connection on `user:{id}` (bench.wire, acking as an app does).
Requests go straight onto `notification-requests` (as another system's producer would), each for
all four channels, with the production time as `ts`:

1. rate phase: RATE requests/s for DURATION s; per channel the time from `ts` to the in-app update
   reaching its client, and to the SMTP server / SMS provider taking the message (p95);
2. saturation: BURST requests at once; notifications_per_s is BURST over the time until the last
   of their 4 x BURST sends reached its sink.

Every send is counted at the sinks: duplicates (a notification twice on a channel) and lost (one
that never came) over both phases; both must be 0.

    python -m bench.notifications [--rate 200] [--duration 20] [--users 200] [--burst 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import aiohttp
from confluent_kafka import Producer

from agents.commands import notification_request
from agents.notify_flow import notification_id
from bench.harness import CpuMeter, bench_settings, emit, percentiles, pipeline_running
from bench.wire import WireClient
from gateway.auth import Tokens
from infra.settings import Settings
from infra.sinks import Sinks, ports_of, sinks_running
from schemas.avro import codec_for
from schemas.records import NotificationRequest
from schemas.topics import NOTIFICATION_REQUESTS

CHANNELS = ["inapp", "webpush", "email", "sms"]
DRAIN_S = 60.0


def now_ms() -> int:
    return int(time.time() * 1000)


class Run:
    def __init__(self, settings: Settings, sinks: Sinks, users: int) -> None:
        self.settings, self.sinks = settings, sinks
        self.users = [f"bn-{i:04d}" for i in range(users)]
        self.sent: dict[str, tuple[str, int]] = {}  # notification id -> (user, ts)
        self.inapp: Counter[str] = Counter()
        self.inapp_ms: list[float] = []
        self.phase = "rate"
        self.producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 2, "acks": "all"})
        self.codec = codec_for(NotificationRequest)
        self.clients: list[WireClient] = []

    def produce(self, r: Any) -> None:
        self.producer.produce(NOTIFICATION_REQUESTS.name, self.codec.dumps(r), key=r["user_id"].encode())
        self.producer.poll(0)

    async def setup(self, session: aiohttp.ClientSession) -> None:
        """Each user's preferences and subscription (through Kafka), and its /live connection."""
        tokens = Tokens(self.settings)
        for u in self.users:
            prefs = {"email": f"{u}@example.org", "phone": f"+1555{u[-4:]}", "opt_out": {}, "quiet_hours": None,
                     "caps": {}}
            self.produce(notification_request("PREFERENCES", u, now_ms(), payload=json.dumps(prefs)))
            self.produce(notification_request("SUBSCRIBE", u, now_ms(), payload=json.dumps(self.sinks.subscription(u))))
        self.producer.flush(30)
        for u in self.users:
            c = WireClient(session, self.settings.gateway_url, tokens.mint("customer", u), self.on_update)
            await c.connect()
            await c.subscribe(f"user:{u}")
            self.clients.append(c)

    def on_update(self, update: dict[str, Any]) -> None:
        if update["type"] != "notification":
            return
        nid = update["data"]["notification_id"]
        self.inapp[nid] += 1
        if self.phase == "rate" and nid in self.sent:
            self.inapp_ms.append(now_ms() - self.sent[nid][1])

    def request(self, i: int, phase: str) -> str:
        user = self.users[i % len(self.users)]
        key, ts = f"{phase}-{i}", now_ms()
        nid = notification_id(user, key)
        self.sent[nid] = (user, ts)
        self.produce(notification_request("REQUEST", user, ts, idempotency_key=key, category="bench.note",
                                          title=f"n {key}", body="bench", channels=CHANNELS, source="bench"))
        return nid

    async def rate_phase(self, rate: float, duration_s: float) -> list[str]:
        start, n, ids = time.perf_counter(), 0, []
        while (elapsed := time.perf_counter() - start) < duration_s:
            for _ in range(int(elapsed * rate) - n):
                ids.append(self.request(n, "rate"))
                n += 1
            await asyncio.sleep(0.005)
        self.producer.flush(30)
        return ids

    def received(self) -> dict[str, Counter[str]]:
        """Per channel: notification id -> how many times its sink got it."""
        mail = Counter(m["message_id"].strip("<>").split("@")[0] for m in self.sinks.mail)
        sms = Counter(self._sms_nid(m["body"], m["to"]) for m in self.sinks.sms)
        push = Counter(p["payload"]["notification_id"] for p in self.sinks.pushes)
        return {"inapp": self.inapp, "email": mail, "sms": sms, "webpush": push}

    def _sms_nid(self, body: str, to: str) -> str:
        key = body.split(":", 1)[0][2:]  # "n {key}: bench"
        user = f"bn-{to[-4:]}"
        return notification_id(user, key)

    def accepted_ms(self, ids: set[str]) -> dict[str, list[float]]:
        mail = {m["message_id"].strip("<>").split("@")[0]: m["received_ts"] for m in self.sinks.mail}
        sms = {self._sms_nid(m["body"], m["to"]): m["received_ts"] for m in self.sinks.sms}
        return {"email": [mail[i] - self.sent[i][1] for i in ids if i in mail],
                "sms": [sms[i] - self.sent[i][1] for i in ids if i in sms]}

    async def drained(self, ids: list[str], timeout_s: float) -> float:
        """Wait until every send of `ids` reached its sink; when that was (perf_counter), or inf."""
        want = set(ids)
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            got = self.received()
            if all(want <= set(got[c]) for c in CHANNELS):
                return time.perf_counter()
            await asyncio.sleep(0.05)
        return float("inf")


async def bench(settings: Settings, rate: float, duration_s: float, users: int, burst: int,
                meter: CpuMeter) -> dict[str, Any]:
    smtp, http = ports_of(settings)
    connector = aiohttp.TCPConnector(limit=0)  # a websocket per user: past the default 100 connections
    async with sinks_running(smtp, http) as sinks, aiohttp.ClientSession(connector=connector) as session:
        run = Run(settings, sinks, users)
        await run.setup(session)
        await asyncio.sleep(2.0)  # preferences applied before the first request
        ids = await run.rate_phase(rate, duration_s)
        await run.drained(ids, DRAIN_S)
        accepted = run.accepted_ms(set(ids))
        run.phase = "burst"
        meter.start()
        started = time.perf_counter()
        burst_ids = []
        for i in range(burst):
            burst_ids.append(run.request(i, "burst"))
        run.producer.flush(30)
        done = await run.drained(burst_ids, DRAIN_S * 2)
        cpu = meter.stop()  # over the burst: which process saturates
        got = run.received()
        for c in run.clients:
            await c.close()
        run.producer.flush(10)
    all_ids = set(run.sent)
    dup = sum(n - 1 for c in CHANNELS for n in got[c].values() if n > 1)
    lost = sum(1 for c in CHANNELS for i in all_ids if i not in got[c])
    return {
        "rate_per_s": rate, "duration_s": duration_s, "users": users, "burst": burst,
        "notifications_per_s": round(burst / (done - started), 1) if done != float("inf") else 0.0,
        "event_to_inapp_p95_ms": percentiles(run.inapp_ms, "x")["x_p95_ms"],
        "event_to_inapp_p50_ms": percentiles(run.inapp_ms, "x")["x_p50_ms"],
        "event_to_email_accepted_p95_ms": percentiles(accepted["email"], "x")["x_p95_ms"],
        "event_to_sms_accepted_p95_ms": percentiles(accepted["sms"], "x")["x_p95_ms"],
        **{f"burst_{k}": v for k, v in cpu.items()},
        "sends": sum(sum(got[c].values()) for c in CHANNELS), "duplicates": dup, "lost": lost,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--burst", type=int, default=3000)
    args = ap.parse_args()
    base = bench_settings()
    settings = bench_settings(
        notify_smtp_servers=f"127.0.0.1:{base.notify_sinks_port + 100}",
        notify_sms_base_urls=f"http://127.0.0.1:{base.notify_sinks_port + 101}",
        notify_sinks_port=base.notify_sinks_port + 101, notify_caps="", notify_escalation_s=3600.0,
        notify_send_concurrency=128)
    with pipeline_running(settings, "bench-notifications") as (worker, gateway):
        meter = CpuMeter(settings, worker, gateway, loadgen=True)
        figures = asyncio.run(bench(settings, args.rate, args.duration, args.users, args.burst, meter))
    emit(figures)


if __name__ == "__main__":
    main()
