"""Web push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291), by pywebpush.

`TTL` is the notification's time left (a critical offer's few seconds), `Urgency` high for critical
ones, and `Topic` the notification's id: a push service replaces an undelivered message of the same
topic, so a send repeated in the ledger's window is collapsed there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
from py_vapid import Vapid02
from pywebpush import WebPushException, webpush_async

from infra.notify.providers import GONE, PERMANENT, TRANSIENT, Accepted, ProviderError
from schemas import typed

__all__ = ["WebPushProvider", "vapid_key", "topic_of"]

MAX_TTL_S = 24 * 3600


def vapid_key(path: Path) -> Vapid02:
    """The VAPID key pair at `path` (PEM), made once (owner-only) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Vapid02()
        key.generate_keys()
        key.save_key(str(path))
        path.chmod(0o600)
    return Vapid02.from_file(str(path))


def topic_of(d: typed.NotificationDelivery) -> str:
    return d["notification_id"][:32]  # RFC 8030 5.4: at most 32 URL-safe base64 characters


class WebPushProvider:
    """Sends to whichever push service the subscription names."""

    def __init__(self, key: Vapid02, subject: str, *, timeout_s: float = 5.0) -> None:
        self.name = "webpush"
        self.key = key
        self.subject = subject
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """One HTTP session (kept connections per push service) for every send, made on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def payload(self, d: typed.NotificationDelivery) -> str:
        return json.dumps({"notification_id": d["notification_id"], "title": d["title"], "body": d["body"],
                           "category": d["category"], "data": json.loads(d["data"]) if d["data"] else None},
                          separators=(",", ":"))

    async def send(self, d: typed.NotificationDelivery) -> Accepted:
        sub = json.loads(d["address"])
        ttl = MAX_TTL_S
        if d["expires_at"]:
            ttl = max(1, min(MAX_TTL_S, (d["expires_at"] - int(time.time() * 1000)) // 1000))
        headers: dict[str, str | int | float] = {
            "Urgency": "high" if d["priority"] == "critical" else "normal", "Topic": topic_of(d)}
        try:
            resp = await webpush_async(sub, self.payload(d), vapid_private_key=self.key,
                                       vapid_claims={"sub": self.subject}, ttl=ttl, headers=headers,
                                       timeout=self.timeout_s, aiohttp_session=self.session())
        except WebPushException as exc:
            raise _error(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(TRANSIENT, type(exc).__name__) from None
        if isinstance(resp, str):
            raise ProviderError(PERMANENT, "no response")
        return Accepted(self.name)


def _error(exc: WebPushException) -> ProviderError:
    resp = exc.response
    status = int(getattr(resp, "status", None) or getattr(resp, "status_code", 0) or 0)
    retry = None
    if resp is not None and (ra := resp.headers.get("Retry-After")):
        try:
            retry = float(ra)
        except ValueError:
            retry = None
    if status in (404, 410):
        return ProviderError(GONE, f"HTTP {status}")
    if status in (408, 429) or status >= 500 or status == 0:
        return ProviderError(TRANSIENT, f"HTTP {status}", retry)
    return ProviderError(PERMANENT, f"HTTP {status}")
