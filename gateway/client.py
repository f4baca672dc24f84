"""The Python client of /live (simulator, tests, benchmarks): python-socketio's AsyncClient plus
resume with `since`, dedupe by seq, gap detection and acks.

    client = LiveClient(url, token, on_update=show)
    await client.connect()
    await client.subscribe("driver:d-1")

What it guarantees the application (`on_update`): per channel, seqs only
grow and never repeat; a seq that is neither delivered nor declared skipped
by the gateway (`skipped`: expired or superseded) is never silently lost:
the client resubscribes from its last seq, and only if the gateway's history
cannot cover the gap does it take the snapshot (`on_snapshot`, a `reset`).
After every reconnection (the client's own: jittered exponential backoff,
whatever the failure), each channel resumes from the last seq seen.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import socketio

from gateway.channels import FLEET, NAMESPACE

__all__ = ["ClientStats", "LiveClient", "SubscribeRefused"]

log = logging.getLogger(__name__)
Update = dict[str, Any]


class SubscribeRefused(Exception):
    """The gateway refused a subscription (its reason is the message)."""


@dataclass
class ClientStats:
    """What the client saw; `gaps` counts seq jumps it repaired by resuming, `resets` the ones it could not."""

    delivered: int = 0  # updates handed to on_update
    duplicates: int = 0  # seqs seen before, dropped
    skipped: int = 0  # seqs the gateway declared left out (TTL ended, superseded by a newer state)
    gaps: int = 0  # undeclared seq jumps: repaired by resubscribing with since
    resets: int = 0  # `recovered: false`: history could not cover; the snapshot replaced the missed updates
    resumes: int = 0  # subscribes with since (reconnections and gap repairs)
    acks: int = 0
    connects: int = 0


class LiveClient:
    """One /live connection and its subscriptions, kept across reconnections."""

    def __init__(
        self, url: str, token: str | Callable[[], str], *,
        on_update: Callable[[Update], None] | None = None,
        on_snapshot: Callable[[str, Update | None], None] | None = None,
        reconnection: bool = True, retry_delay_s: float = 1.0, retry_delay_max_s: float = 5.0,
        transports: tuple[str, ...] = ("websocket",), call_timeout_s: float = 30, **sio_options: Any,
    ) -> None:
        self.url = url
        self.token = token
        self.on_update = on_update or (lambda update: None)
        self.on_snapshot = on_snapshot or (lambda channel, snapshot: None)
        self.transports = list(transports)
        self.call_timeout_s = call_timeout_s
        # Reconnection is ours: python-socketio's loop ends for good when aiohttp raises anything but a
        # ConnectionError mid-handshake (an AssertionError when the server dies during it, seen here).
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, **sio_options)
        self.reconnection = reconnection
        self.retry_delay_s = retry_delay_s
        self.retry_delay_max_s = retry_delay_max_s
        self.last: dict[str, int] = {}  # channel -> last seq applied
        self.channels: set[str] = set()  # what to (re)subscribe to on every connection
        self.stats = ClientStats()
        self._resyncing: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.sio.on("connect", self._on_connect, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        self.sio.on("update", self._on_update, namespace=NAMESPACE)

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected) and NAMESPACE in self.sio.namespaces

    async def connect(self, timeout_s: float = 10) -> None:
        """Connect (raises socketio.exceptions.ConnectionError with the gateway's reason when refused)."""
        self._closing = False
        self.connect_timeout_s = timeout_s
        await self._connect_once()

    async def _connect_once(self) -> None:
        token = self.token
        auth = (lambda: {"token": token()}) if callable(token) else {"token": token}
        await self.sio.connect(self.url, namespaces=[NAMESPACE], transports=self.transports, auth=auth,
                               wait_timeout=self.connect_timeout_s)

    async def disconnect(self) -> None:
        self._closing = True
        for task in [*self._tasks, *([self._reconnecting] if self._reconnecting else [])]:
            task.cancel()
        await self.sio.disconnect()

    async def _on_disconnect(self, reason: Any = None) -> None:
        """Dropped (network, gateway gone or restarting, dropped as too slow): reconnect and resume."""
        self._resyncing.clear()  # unanswered resubscribes died with the connection; the next one resumes all
        if self.reconnection and not self._closing and self._reconnecting is None:
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Retry with jittered exponential backoff until connected or closed; every failure is retried."""
        delay = self.retry_delay_s
        try:
            while not self._closing and not self.connected:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.retry_delay_max_s)
                try:
                    await self._connect_once()
                except Exception as exc:  # refused, reset, timed out, or aiohttp's assertion: try again
                    log.debug("reconnect failed: %s: %s", type(exc).__name__, exc)
                    if self.sio.connected and not self.connected:
                        await self.sio.disconnect()  # half connected: start clean
        finally:
            self._reconnecting = None

    async def subscribe(self, channel: str) -> dict[str, Any]:
        """Subscribe (resuming from the last seq seen, if any); the gateway's ack, once applied."""
        self.channels.add(channel)
        ack = await asyncio.wait_for(self._subscribe(channel), self.call_timeout_s)
        if not ack.get("ok"):
            self.channels.discard(channel)
            raise SubscribeRefused(ack.get("error", "refused"))
        return ack

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        await self.sio.call("unsubscribe", {"channel": channel}, namespace=NAMESPACE, timeout=self.call_timeout_s)

    def _subscribe(self, channel: str) -> asyncio.Future[dict[str, Any]]:
        """Send `subscribe`; the ack is applied in the callback, in arrival order with the updates."""
        since = self.last.get(channel)
        request: dict[str, Any] = {"channel": channel}
        if since is not None:
            request["since"] = since
            self.stats.resumes += 1
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_ack(ack: Any = None) -> None:
            self._resyncing.discard(channel)
            ack = ack if isinstance(ack, dict) else {"ok": False, "error": "no ack"}
            if ack.get("ok"):
                self._apply_ack(channel, since, ack)
            if not done.done():
                done.set_result(ack)

        def sent(task: asyncio.Future[Any]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is not None and not done.done():
                done.set_exception(error)  # not connected: fail now, not at the timeout

        self._spawn(self.sio.emit("subscribe", request, namespace=NAMESPACE, callback=on_ack)).add_done_callback(sent)
        return done

    def _apply_ack(self, channel: str, since: int | None, ack: dict[str, Any]) -> None:
        for snapshot in ack.get("drivers", ()):  # `fleet`: every driver's latest, but for channels
            if snapshot["channel"] not in self.channels:  # subscribed alone (they resume on their own)
                self._on_update(snapshot)
        if since is not None and ack.get("recovered"):
            for update in ack.get("updates", ()):
                self._on_update(update)
        elif "snapshot" in ack:
            if since is not None:
                self.stats.resets += 1
            snapshot = ack["snapshot"]
            if snapshot is None or snapshot["seq"] > self.last.get(channel, 0):
                self.on_snapshot(channel, snapshot)
        head = ack.get("seq", 0)
        if channel != FLEET and head > self.last.get(channel, 0):
            self.last[channel] = head  # everything up to the head was delivered, declared skipped, or snapshotted

    async def _on_connect(self) -> None:
        """Every (re)connection: subscribe again to every channel, from the last seq seen."""
        self.stats.connects += 1
        for channel in sorted(self.channels):
            self._spawn(self._resubscribe(channel))

    async def _resubscribe(self, channel: str) -> None:
        try:
            ack = await asyncio.wait_for(self._subscribe(channel), self.call_timeout_s)
        except (asyncio.TimeoutError, socketio.exceptions.SocketIOError) as exc:
            self._resyncing.discard(channel)  # the next gap, or the next connection, tries again
            log.warning("resubscribe to %s failed (%s); the next gap or connection retries", channel,
                        type(exc).__name__)
            return
        if not ack.get("ok"):
            log.warning("resubscribe to %s refused: %s", channel, ack.get("error"))

    def _on_update(self, update: Update) -> None:
        channel, seq = update["channel"], update["seq"]
        last = self.last.get(channel)
        if last is not None and seq <= last:
            self.stats.duplicates += 1
            if update.get("ack"):
                self._ack(channel, last)  # a retry: our ack was lost or late
            return
        skipped = update.get("skipped", 0)
        if last is not None and seq - skipped > last + 1 and channel in self.channels:
            if channel not in self._resyncing:  # the resubscribe's ack brings this one and those before it
                self.stats.gaps += 1
                self._resyncing.add(channel)
                self._spawn(self._resubscribe(channel))
            return
        self.last[channel] = seq
        self.stats.skipped += skipped
        self.stats.delivered += 1
        self.on_update(update)
        if update.get("ack"):
            self._ack(channel, seq)

    def _ack(self, channel: str, seq: int) -> None:
        self.stats.acks += 1
        # A lost ack costs a retry, which is acked again: no need to know whether this one got out.
        self._spawn(self.sio.emit("ack", {"channel": channel, "seq": seq}, namespace=NAMESPACE)).add_done_callback(
            lambda task: task.cancelled() or task.exception())

    def _spawn(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
