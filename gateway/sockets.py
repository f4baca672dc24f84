"""Socket.IO namespace /live: subscribe, unsubscribe, and the push fan-out."""
from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

import socketio
from socketio.exceptions import ConnectionRefusedError

from gateway.auth import Principal, Tokens, may_subscribe
from gateway.channels import CHANNEL_RE, ChannelStore, Update, update_from_push
from gateway.errors import GatewayError, Unauthorized
from gateway.metrics import Metrics
from infra.producer import ProduceError

__all__ = ["LiveNamespace", "NAMESPACE"]

log = logging.getLogger(__name__)
NAMESPACE = "/live"
FLEET = "fleet"


class LiveNamespace(socketio.AsyncNamespace):
    """Clients subscribe to channels; the bridge's updates go to the channel's room."""

    def __init__(self, store: ChannelStore, metrics: Metrics, tokens: Tokens,
                 ride_rider: Callable[[str], str | None] = lambda ride_id: None,
                 decide: Callable[[Principal, str, str], Awaitable[None]] | None = None) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.metrics = metrics
        self.tokens = tokens
        # ride id -> its rider's id; dispatch supplies it (until then riders may subscribe to nothing)
        self.ride_rider = ride_rider
        # A driver's answer to an offer, sent to where its reservation is decided (gateway.rides).
        self.decide = decide
        self.principals: dict[str, Principal] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Refuse a connection without a valid `auth: {token}`; the client sees the reason."""
        try:
            principal = self.tokens.verify(auth.get("token") if isinstance(auth, dict) else None)
        except Unauthorized as exc:
            self.metrics.refused.labels("connect").inc()
            raise ConnectionRefusedError(str(exc)) from None
        self.principals[sid] = principal
        self.metrics.connected.inc()

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        if self.principals.pop(sid, None) is not None:
            self.metrics.connected.dec()

    async def on_subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        channel = _channel_of(data)
        if channel is None:
            return {"ok": False, "error": "channel must be driver:{id}, ride:{id}, cell:{h3} or fleet"}
        principal = self.principals.get(sid)
        if principal is None or not may_subscribe(principal, channel, self.ride_rider):
            self.metrics.refused.labels("subscribe").inc()
            return {"ok": False, "error": f"not allowed: {channel}"}
        await self.enter_room(sid, channel)
        return {"ok": True, "channel": channel, "snapshot": self.store.snapshot(channel)}

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        channel = _channel_of(data)
        if channel is None:
            return {"ok": False, "error": "unknown channel"}
        await self.leave_room(sid, channel)
        return {"ok": True, "channel": channel}

    async def on_accept(self, sid: str, data: Any) -> dict[str, Any]:
        """A driver accepts an offer: `{"ride_id": ...}`; the outcome comes on its `driver:{id}` channel."""
        return await self._answer(sid, data, "ACCEPT")

    async def on_decline(self, sid: str, data: Any) -> dict[str, Any]:
        return await self._answer(sid, data, "DECLINE")

    async def _answer(self, sid: str, data: Any, op: str) -> dict[str, Any]:
        ride_id = data.get("ride_id") if isinstance(data, dict) else None
        principal = self.principals.get(sid)
        if principal is None or self.decide is None or not isinstance(ride_id, str):
            return {"ok": False, "error": "send {\"ride_id\": ...} on a driver's connection"}
        try:
            await self.decide(principal, ride_id, op)
        except GatewayError as exc:
            return {"ok": False, "error": str(exc)}
        except ProduceError:
            return {"ok": False, "error": "event log unavailable, retry", "retry": True}
        return {"ok": True, "ride_id": ride_id, "submitted": op.lower()}

    async def publish(self, batch: list[dict[str, Any]]) -> None:
        """Fan a batch of decoded push messages out to their rooms (the bridge's handler)."""
        now = time.time()
        for msg in batch:
            self.metrics.pushed.inc()
            update = update_from_push(msg)
            if not self.store.offer(update):
                continue  # replayed or redelivered: subscribers already have it
            await self._emit(update)
            self.metrics.event_to_emit.observe(max(0.0, now - update.ts / 1000))

    async def _emit(self, update: Update) -> None:
        # Ops watch every driver and every ride on `fleet` (the live map shows whole trips).
        rooms = [update.channel, FLEET] if update.channel.startswith(("driver:", "ride:")) else [update.channel]
        await self.emit("update", update.payload(), room=rooms)
        self.metrics.emitted.inc()


def _channel_of(data: Any) -> str | None:
    channel = data.get("channel") if isinstance(data, dict) else None
    return channel if isinstance(channel, str) and CHANNEL_RE.fullmatch(channel) else None
