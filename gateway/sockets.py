"""Socket.IO namespace /live: subscribe, unsubscribe, and the push fan-out."""
from __future__ import annotations

import logging
import time
from typing import Any

import socketio

from gateway.channels import CHANNEL_RE, ChannelStore, Update, update_from_push
from gateway.metrics import Metrics

__all__ = ["LiveNamespace", "NAMESPACE"]

log = logging.getLogger(__name__)
NAMESPACE = "/live"
FLEET = "fleet"


class LiveNamespace(socketio.AsyncNamespace):
    """Clients subscribe to channels; the bridge's updates go to the channel's room."""

    def __init__(self, store: ChannelStore, metrics: Metrics) -> None:
        super().__init__(NAMESPACE)
        self.store = store
        self.metrics = metrics

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.metrics.connected.inc()

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.metrics.connected.dec()

    async def on_subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        channel = _channel_of(data)
        if channel is None:
            return {"ok": False, "error": "channel must be driver:{id}, ride:{id}, cell:{h3} or fleet"}
        await self.enter_room(sid, channel)
        return {"ok": True, "channel": channel, "snapshot": self.store.snapshot(channel)}

    async def on_unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        channel = _channel_of(data)
        if channel is None:
            return {"ok": False, "error": "unknown channel"}
        await self.leave_room(sid, channel)
        return {"ok": True, "channel": channel}

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
        rooms = [update.channel, FLEET] if update.channel.startswith("driver:") else [update.channel]
        await self.emit("update", update.payload(), room=rooms)
        self.metrics.emitted.inc()


def _channel_of(data: Any) -> str | None:
    channel = data.get("channel") if isinstance(data, dict) else None
    return channel if isinstance(channel, str) and CHANNEL_RE.fullmatch(channel) else None
