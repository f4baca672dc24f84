"""E-mail over SMTP (aiosmtplib): STARTTLS and AUTH as configured; text and HTML from sandboxed Jinja2.

The Message-ID is derived from the notification's id (itself from the idempotency key), so a send
repeated in the ledger's window carries the same Message-ID and a mail store can collapse it.
"""
from __future__ import annotations

import asyncio
import json
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from infra.notify.providers import PERMANENT, TRANSIENT, Accepted, ProviderError
from schemas import typed

__all__ = ["SmtpProvider", "Templates", "message_id"]

TEXT = "{{ title }}\n\n{{ body }}\n{% if link %}\n{{ link }}\n{% endif %}\n-- livetrack ({{ category }})\n"
HTML = ("<!doctype html><html><body><h1>{{ title }}</h1><p>{{ body }}</p>"
        "{% if link %}<p><a href=\"{{ link }}\">Open</a></p>{% endif %}"
        "<p style=\"color:#888\">livetrack · {{ category }}</p></body></html>")


def message_id(d: typed.NotificationDelivery, domain: str) -> str:
    return f"<{d['notification_id']}@{domain}>"


class Templates:
    """The e-mail templates, rendered in Jinja2's sandbox (StrictUndefined: a missing name fails loudly);
    the HTML one autoescaped, so a title or data value cannot inject markup."""

    def __init__(self) -> None:
        self.text = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(TEXT)
        self.html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True).from_string(HTML)

    def render(self, d: typed.NotificationDelivery) -> tuple[str, str]:
        data = json.loads(d["data"]) if d["data"] else {}
        link = data.get("link") if isinstance(data, dict) and isinstance(data.get("link"), str) else None
        values = {"title": d["title"], "body": d["body"], "category": d["category"], "link": link}
        return self.text.render(values), self.html.render(values)


class SmtpProvider:
    """One SMTP server (host:port), over a small pool of kept connections (connect, EHLO, STARTTLS and
    AUTH once per connection, not per message); a connection that saw any error is closed."""

    def __init__(self, host: str, port: int, *, sender: str, starttls: bool, username: str | None,
                 password: str | None, templates: Templates, domain: str = "livetrack.local",
                 timeout_s: float = 5.0, pool: int = 16) -> None:
        self.name = f"smtp:{host}:{port}"
        self.host, self.port = host, port
        self.sender = sender
        self.starttls = starttls
        self.username, self.password = username, password
        self.templates = templates
        self.domain = domain
        self.timeout_s = timeout_s
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(pool)

    def message(self, d: typed.NotificationDelivery) -> EmailMessage:
        text, html = self.templates.render(d)
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = self.sender, d["address"], d["title"]
        m["Message-ID"] = message_id(d, self.domain)
        m["Date"] = formatdate(d["decided_ts"] / 1000, usegmt=True)
        m["X-Livetrack-Category"] = d["category"]
        m.set_content(text)
        m.add_alternative(html, subtype="html")
        return m

    async def _connection(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, start_tls=self.starttls, timeout=self.timeout_s)
        await client.connect()
        if self.username and self.password:
            await client.login(self.username, self.password)
        return client

    async def close(self) -> None:
        for client in self._idle:
            client.close()
        self._idle.clear()

    async def send(self, d: typed.NotificationDelivery) -> Accepted:
        async with self._slots:
            client: aiosmtplib.SMTP | None = None
            try:
                client = await self._connection()
                await client.send_message(self.message(d))
            except aiosmtplib.SMTPRecipientsRefused as exc:
                codes = [r.code for r in exc.recipients]
                kind = TRANSIENT if all(400 <= c < 500 for c in codes) else PERMANENT
                raise ProviderError(kind, f"recipient refused ({','.join(map(str, codes))})") from None
            except aiosmtplib.SMTPResponseException as exc:
                kind = TRANSIENT if 400 <= exc.code < 500 else PERMANENT
                raise ProviderError(kind, f"SMTP {exc.code}") from None
            except (aiosmtplib.SMTPException, OSError) as exc:  # cannot connect, dropped, timed out
                raise ProviderError(TRANSIENT, f"SMTP {type(exc).__name__}") from None
            else:
                self._idle.append(client)
                client = None
            finally:
                _closed(client)
        return Accepted(self.name)


def _closed(client: aiosmtplib.SMTP | None) -> None:
    """Drop a connection that saw an error (or a cancellation): its state is unknown."""
    if client is not None:
        client.close()
