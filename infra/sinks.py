"""Local, real servers for every notification channel, for the tests, the benchmark and the demo.

- SMTP (aiosmtpd) on 127.0.0.1, one server per port: keeps each message (Message-ID, To, Subject,
  the text and HTML parts) or answers a scripted code (451, 550) to DATA.
- An SMS provider speaking Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`,
  basic auth): 201 with a Twilio message resource, or a scripted 429 (with Retry-After), 503, 400
  (code 21211) or a hang (the sender's timeout: "unknown").
- A web push service (RFC 8030) handing out subscriptions (`POST /push/subscribe`: endpoint and
  subscriber keys, the private half kept here as a browser would keep it) and taking pushes: the
  VAPID JWT (RFC 8292) is verified against the `k=` key, `TTL`, `Urgency` and `Topic` checked, and the
  payload decrypted with the subscriber's keys (RFC 8291, http_ece aes128gcm); scripted 429, 410.
- A page (`/`) showing what arrived, newest first, and `/received` as JSON.

Answers are scripted per target (`script(target, [answers])`, or `POST /script`): each request takes
the next answer, then 'ok' again.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import html
import json
import secrets
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, AsyncIterator

import http_ece
import jwt
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.settings import Settings

__all__ = ["Sinks", "ports_of", "serve_sinks", "sinks_running"]

URGENCIES = frozenset({"very-low", "low", "normal", "high"})
MAX_PAYLOAD = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscriber:
    """A browser's half of a subscription: its private key and auth secret."""

    key: ec.EllipticCurvePrivateKey
    auth: bytes

    def public(self) -> str:
        return _b64(self.key.public_key().public_bytes(serialization.Encoding.X962,
                                                       serialization.PublicFormat.UncompressedPoint))


@dataclass
class Sinks:
    """The servers' state: what each received (with its arrival time, epoch ms) and the scripts."""

    smtp_ports: list[int] = field(default_factory=list)
    http_port: int = 0
    mail: list[dict[str, Any]] = field(default_factory=list)
    sms: list[dict[str, Any]] = field(default_factory=list)
    pushes: list[dict[str, Any]] = field(default_factory=list)
    tries: list[dict[str, Any]] = field(default_factory=list)  # every request, answered how
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    scripts: dict[str, deque[str]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    # --- scripting --------------------------------------------------------------------------------
    def script(self, target: str, answers: list[str]) -> None:
        """`target`: smtp:{port}, sms or push; answers like '451', '429:2' (Retry-After 2), 'hang', 'ok'."""
        self.scripts[target] = deque(answers)

    def _answer(self, target: str) -> str:
        queue = self.scripts.get(target)
        answer = queue.popleft() if queue else "ok"
        self.tries.append({"target": target, "answer": answer, "ts": int(time.time() * 1000)})
        return answer

    def _got(self, into: list[dict[str, Any]], item: dict[str, Any]) -> None:
        item["received_ts"] = int(time.time() * 1000)
        into.append(item)
        self.arrived.set()

    @property
    def sms_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def subscription(self, name: str | None = None) -> dict[str, Any]:
        """A new subscription on this push service, as a browser's PushManager.subscribe() gives one."""
        sid = name or secrets.token_urlsafe(12)
        sub = self.subscribers[sid] = Subscriber(ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16))
        return {"endpoint": f"http://127.0.0.1:{self.http_port}/push/{sid}",
                "keys": {"p256dh": sub.public(), "auth": _b64(sub.auth)}}

    # --- SMTP ---------------------------------------------------------------------------------------
    def smtp_handler(self, port: int) -> "_MailHandler":
        return _MailHandler(self, port)

    # --- HTTP: SMS and push ------------------------------------------------------------------------
    async def on_sms(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Basic "):
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        answer = self._answer("sms")
        if answer == "hang":
            await asyncio.sleep(3)  # longer than the senders' timeout in the tests
        status, _, retry = answer.partition(":")
        if status != "ok":
            code = {"429": 20429, "400": 21211}.get(status, 20500)
            headers = {"Retry-After": retry} if retry else {}
            return web.json_response({"code": code, "message": f"scripted {status}", "status": int(status)},
                                     status=int(status), headers=headers)
        form = await request.post()
        sid = "SM" + secrets.token_hex(16)
        self._got(self.sms, {"sid": sid, "to": str(form.get("To")), "from": str(form.get("From")),
                             "body": str(form.get("Body"))})
        return web.json_response({"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"),
                                  "body": form.get("Body"), "account_sid": request.match_info["sid"],
                                  "num_segments": "1", "direction": "outbound-api"}, status=201)

    async def on_subscribe(self, request: web.Request) -> web.Response:
        return web.json_response(self.subscription())

    async def on_push(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        sub = self.subscribers.get(sid)
        body = await request.read()
        answer = self._answer("push")
        if sub is None or answer == "410":
            return web.Response(status=410, text="subscription gone")
        status, _, retry = answer.partition(":")
        if status != "ok":
            return web.Response(status=int(status), headers={"Retry-After": retry} if retry else {})
        problem = self._check_push(request, body)
        if problem:
            return web.Response(status=400, text=problem)
        try:
            clear = http_ece.decrypt(body, private_key=sub.key, auth_secret=sub.auth, version="aes128gcm")
        except Exception as exc:  # any decryption failure: the payload was not encrypted for this subscriber
            return web.Response(status=400, text=f"cannot decrypt: {type(exc).__name__}")
        self._got(self.pushes, {"subscription": sid, "payload": json.loads(clear), "ttl": int(request.headers["TTL"]),
                                "urgency": request.headers.get("Urgency"), "topic": request.headers.get("Topic"),
                                "vapid_sub": request["vapid_sub"]})
        return web.Response(status=201, headers={"Location": f"/push/{sid}/m/{secrets.token_hex(8)}"})

    def _check_push(self, request: web.Request, body: bytes) -> str | None:
        """Why a push is refused (RFC 8030, 8291, 8292), or None."""
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return "Content-Encoding must be aes128gcm"
        if len(body) > MAX_PAYLOAD:
            return "payload too large"
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            return "TTL header missing"
        if request.headers.get("Urgency", "normal") not in URGENCIES:
            return "bad Urgency"
        topic = request.headers.get("Topic")
        if topic is not None and (len(topic) > 32 or not all(c.isalnum() or c in "-_" for c in topic)):
            return "bad Topic"
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("vapid "):
            return "no VAPID authorization"
        parts = dict(p.strip().split("=", 1) for p in auth[6:].split(","))
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(parts["k"]))
            claims = jwt.decode(parts["t"], key, algorithms=["ES256"], audience=f"http://127.0.0.1:{self.http_port}",
                                options={"require": ["aud", "exp", "sub"]})
        except (KeyError, ValueError, jwt.InvalidTokenError) as exc:
            return f"VAPID: {type(exc).__name__}"
        if claims["exp"] > time.time() + 24 * 3600:
            return "VAPID exp more than 24 h ahead"
        request["vapid_sub"] = claims["sub"]
        return None

    async def on_script(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.script(str(body["target"]), [str(a) for a in body["answers"]])
        return web.json_response({"ok": True})

    async def on_received(self, request: web.Request) -> web.Response:
        return web.json_response({"mail": self.mail, "sms": self.sms, "pushes": self.pushes, "tries": self.tries})

    async def on_page(self, request: web.Request) -> web.Response:
        def rows(items: list[dict[str, Any]], *keys: str) -> str:
            return "".join("<tr>" + "".join(f"<td>{html.escape(str(i.get(k)))}</td>" for k in keys) + "</tr>"
                           for i in reversed(items[-100:]))
        page = ("<!doctype html><meta http-equiv=refresh content=2><title>livetrack sinks</title>"
                "<style>body{font:14px sans-serif}td{border-bottom:1px solid #ddd;padding:2px 6px}</style>"
                f"<h2>Mailbox ({len(self.mail)})</h2><table>{rows(self.mail, 'to', 'subject', 'message_id', 'text')}</table>"
                f"<h2>SMS ({len(self.sms)})</h2><table>{rows(self.sms, 'to', 'body', 'sid')}</table>"
                f"<h2>Web push ({len(self.pushes)}, decrypted)</h2>"
                f"<table>{rows(self.pushes, 'subscription', 'payload', 'ttl', 'urgency', 'topic')}</table>")
        return web.Response(text=page, content_type="text/html")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.on_sms)
        app.router.add_post("/push/subscribe", self.on_subscribe)
        app.router.add_post("/push/{sid}", self.on_push)
        app.router.add_post("/script", self.on_script)
        app.router.add_get("/received", self.on_received)
        app.router.add_get("/", self.on_page)
        return app


class _MailHandler:
    def __init__(self, sinks: Sinks, port: int) -> None:
        self.sinks = sinks
        self.port = port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = self.sinks._answer(f"smtp:{self.port}")
        if answer != "ok":
            return f"{answer} scripted answer"
        raw = envelope.original_content or envelope.content or b""
        m = message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(), policy=policy.default)
        assert isinstance(m, EmailMessage)
        text, page = m.get_body(("plain",)), m.get_body(("html",))
        self.sinks._got(self.sinks.mail, {
            "port": self.port, "to": list(envelope.rcpt_tos), "subject": str(m["Subject"]),
            "message_id": str(m["Message-ID"]), "text": text.get_content() if text else None,
            "html": page.get_content() if page else None})
        return "250 OK"


def _smtp(sinks: Sinks, port: int) -> SMTP:
    return SMTP(sinks.smtp_handler(port), hostname="livetrack-sink")


@asynccontextmanager
async def sinks_running(smtp_ports: list[int], http_port: int) -> AsyncIterator[Sinks]:
    """Start the SMTP servers and the HTTP one in this event loop; stop them when done."""
    sinks = Sinks(smtp_ports=list(smtp_ports), http_port=http_port)
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(functools.partial(_smtp, sinks, port), "127.0.0.1", port) for port in smtp_ports]
    runner = web.AppRunner(sinks.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    try:
        yield sinks
    finally:
        await runner.cleanup()
        for s in servers:
            s.close()
            await s.wait_closed()


def ports_of(settings: Settings) -> tuple[list[int], int]:
    """The SMTP ports of the configured servers on 127.0.0.1, and the HTTP port (SMS, push, pages)."""
    smtp = [int(hp.rpartition(":")[2]) for hp in settings.notify_smtp_servers.split(",")
            if hp.strip().startswith("127.0.0.1:")]
    return smtp, settings.notify_sinks_port


async def serve_sinks(settings: Settings, duration_s: float | None = None) -> None:
    """Run the local servers for `settings` (`livetrack notifications sinks`, the demo) until cancelled."""
    smtp, http = ports_of(settings)
    async with sinks_running(smtp, http):
        print(f"SMTP on 127.0.0.1:{','.join(map(str, smtp))}; SMS API, web push and the pages on "
              f"http://127.0.0.1:{http}/", flush=True)
        await asyncio.sleep(duration_s if duration_s is not None else float("inf"))
