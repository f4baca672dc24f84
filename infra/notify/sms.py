"""SMS through Twilio's Messages API (the twilio SDK, async), its base URL configurable.

Twilio's creates are not idempotent: a create that timed out may have been taken, so it is
"unknown" and never sent blindly again (providers.Channel). Retry-After is read off the response
(the SDK's exception does not carry headers).
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from infra.notify.providers import PERMANENT, TRANSIENT, Accepted, ProviderError
from schemas import typed

__all__ = ["TwilioProvider"]

RETRIED = frozenset({408, 429})


# The Retry-After of the response the current task's send got (each send runs in a task of its own).
_RETRY_AFTER: ContextVar[str | None] = ContextVar("retry_after", default=None)


class _HeadersKept(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's async client over one kept session, noting each response's Retry-After for its task."""

    async def request(self, *args: Any, **kwargs: Any) -> Response:
        response: Response = await super().request(*args, **kwargs)
        headers = response.headers or {}
        _RETRY_AFTER.set(headers.get("Retry-After"))
        return response


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class TwilioProvider:
    """One Messages API endpoint (`base_url`: Twilio's, or the local simulator)."""

    def __init__(self, base_url: str, *, account_sid: str, auth_token: str, sender: str) -> None:
        self.name = f"twilio:{base_url}"
        self.base_url = base_url.rstrip("/")
        self.account_sid, self.auth_token, self.sender = account_sid, auth_token, sender
        self._client: Client | None = None

    def client(self) -> Client:
        """One SDK client and HTTP session for every send (made in the running loop, on first use)."""
        if self._client is None:
            quiet = logging.getLogger(f"{__name__}.http")  # the SDK logs every request's headers at INFO
            quiet.setLevel(logging.WARNING)
            self._client = Client(self.account_sid, self.auth_token, http_client=_HeadersKept(logger=quiet))
            self._client.api.base_url = self.base_url
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.http_client.close()
            self._client = None

    async def send(self, d: typed.NotificationDelivery) -> Accepted:
        _RETRY_AFTER.set(None)
        try:
            message = await self.client().messages.create_async(to=d["address"], from_=self.sender,
                                                         body=f"{d['title']}: {d['body']}"[:640])
        except TwilioRestException as exc:
            kind = TRANSIENT if exc.status in RETRIED or exc.status >= 500 else PERMANENT
            raise ProviderError(kind, f"HTTP {exc.status} code {exc.code}", _seconds(_RETRY_AFTER.get())) from None
        except OSError as exc:  # not connected: nothing was taken
            raise ProviderError(TRANSIENT, f"{type(exc).__name__}") from None
        return Accepted(self.name, str(message.sid or ""))
