"""Abuse limits per caller: token buckets for request and event rates, counts for connections.

A caller is a token's subject with its role (`driver:d-1`). Ops and system tokens are the
platform's own tools (the map, the simulator) and its integrations (a shop sending its order
events), minted by operators: they are not limited; devices' and people's tokens are. What is over a limit is
refused (HTTP 429 or an error ack, with when to retry) and counted; nothing of it is done.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from gateway.auth import Principal
from infra.settings import Settings

__all__ = ["Buckets", "LiveLimits", "UNLIMITED_ROLES", "caller_of"]

UNLIMITED_ROLES = frozenset({"ops", "system"})
BUCKETS_MAX = 100_000  # callers remembered; past it they all start again with a full bucket


def caller_of(principal: Principal) -> str | None:
    """The key a limit counts this principal under, or None when it is not limited."""
    return None if principal.role in UNLIMITED_ROLES else f"{principal.role}:{principal.sub}"


@dataclass(frozen=True)
class LiveLimits:
    """What one /live caller may hold and send (ops and system: unlimited)."""

    event_rate_per_s: float = 100.0  # per connection
    max_subscriptions: int = 10_000  # per connection
    max_connections: int = 100  # per token subject, at once

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveLimits:
        return cls(settings.live_event_rate_per_s, settings.live_max_subscriptions,
                   settings.live_max_connections_per_token)


class Buckets:
    """A token bucket per caller: `rate` a second, in bursts of up to twice that."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, 2 * rate, clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, caller: str) -> float | None:
        """Take one token: None if there was one, else the seconds until there is."""
        now = self.clock()
        tokens, then = self.buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            return (1 - tokens) / self.rate
        if len(self.buckets) > BUCKETS_MAX:
            self.buckets.clear()
        self.buckets[caller] = (tokens - 1, now)
        return None

    def forget(self, caller: str) -> None:
        self.buckets.pop(caller, None)
