"""What every notification provider is, and how a channel's ordered providers are tried.

A provider's `send` either returns its acceptance or raises a ProviderError saying which kind of
failure it was: transient (timeout before the request was taken, 408, 429, 5xx, 451; `retry_after_s`
when the provider said so), permanent (550, 4xx such as 21211 or 413: never retried), gone (web
push 404/410: the subscription is dead) or unknown (the request may have been taken: an SMS create
that timed out, never resent blindly). `Channel.send` retries a transient failure with exponential
backoff and jitter (at least `Retry-After`), then fails over to the next provider; a provider that
failed `breaker_failures` sends in a row is skipped for `breaker_cooldown_s` (its circuit is open).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from schemas import typed

__all__ = ["Accepted", "Breaker", "Channel", "Outcome", "Provider", "ProviderError", "RetryPolicy"]

log = logging.getLogger(__name__)

TRANSIENT, PERMANENT, GONE, UNKNOWN = "transient", "permanent", "gone", "unknown"


class ProviderError(Exception):
    """A send a provider did not accept: `kind` transient | permanent | gone | unknown, and why."""

    def __init__(self, kind: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Accepted:
    provider: str
    ref: str = ""  # the provider's id for it (Twilio's SID), when it gives one


class Provider(Protocol):
    name: str

    async def send(self, d: typed.NotificationDelivery) -> Accepted:
        """Send `d`; Accepted, or ProviderError."""

    async def close(self) -> None:
        """Close kept connections."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per provider
    first_s: float = 0.5
    max_s: float = 8.0
    timeout_s: float = 5.0  # one attempt

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        base: float = min(self.max_s, self.first_s * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
        return max(base, retry_after_s or 0.0)


@dataclass
class Breaker:
    failures: int = 5
    cooldown_s: float = 30.0
    _row: int = 0
    _open_until: float = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def failed(self) -> None:
        self._row += 1
        if self._row >= self.failures:
            self._open_until = time.monotonic() + self.cooldown_s
            self._row = 0

    def succeeded(self) -> None:
        self._row = 0
        self._open_until = 0.0


@dataclass(frozen=True)
class Outcome:
    """How one send ended: `status` sent | failed | gone | unknown | expired, by which provider, after
    how many attempts, and why (for the audit and the dead letter)."""

    status: str
    provider: str = ""
    attempts: int = 0
    reason: str = ""
    ref: str = ""


@dataclass
class Channel:
    """A channel's providers in order, each behind its breaker."""

    name: str
    providers: Sequence[Provider]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    breakers: dict[str, Breaker] = field(default_factory=dict)

    def breaker(self, p: Provider) -> Breaker:
        b = self.breakers.get(p.name)
        if b is None:
            b = self.breakers[p.name] = Breaker(self.breaker_failures, self.breaker_cooldown_s)
        return b

    async def close(self) -> None:
        for p in self.providers:
            await p.close()

    async def send(self, d: typed.NotificationDelivery, now_ms: "Clock") -> Outcome:
        """Send `d` through the first provider that takes it; never after `d.expires_at`."""
        attempts, reason = 0, "no provider configured"
        usable = [p for p in self.providers if not self.breaker(p).open] or list(self.providers)
        for provider in usable:
            for attempt in range(1, self.retry.attempts + 1):
                if d["expires_at"] and now_ms() >= d["expires_at"]:
                    return Outcome("expired", provider.name, attempts, "expired before it was accepted")
                attempts += 1
                try:
                    accepted = await asyncio.wait_for(provider.send(d), self.retry.timeout_s)
                except (asyncio.TimeoutError, TimeoutError):
                    err = ProviderError(UNKNOWN if self.name == "sms" else TRANSIENT, "timed out")
                except ProviderError as exc:
                    err = exc
                else:
                    self.breaker(provider).succeeded()
                    return Outcome("sent", accepted.provider, attempts, ref=accepted.ref)
                reason = f"{provider.name}: {err.reason}"
                if err.kind == UNKNOWN:
                    return Outcome("unknown", provider.name, attempts, reason)
                if err.kind == GONE:
                    return Outcome("gone", provider.name, attempts, reason)
                if err.kind == PERMANENT:
                    return Outcome("failed", provider.name, attempts, reason)
                self.breaker(provider).failed()
                if attempt == self.retry.attempts or self.breaker(provider).open:
                    break  # over to the next provider
                delay = self.retry.delay(attempt, err.retry_after_s)
                log.info("%s via %s: %s; again in %.2f s", self.name, provider.name, err.reason, delay)
                await asyncio.sleep(delay)
        return Outcome("failed", "", attempts, f"every provider failed; last {reason}")


class Clock(Protocol):
    def __call__(self) -> int: ...
