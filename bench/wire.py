"""A light /live client for load generation: Engine.IO v4 / Socket.IO v5 spoken over one aiohttp websocket.

Why not `gateway.client.LiveClient`: python-socketio's AsyncClient costs a
task per event, an Engine.IO and a Socket.IO packet object and a timer per
read; 5,000 of them took half a core on a 2-core machine, the CPU the gateway
under test needs. This client does the protocol's part of that work only
(as artillery's socket.io engine does): the handshake with the token in
`auth`, `subscribe` with its ack, every `update` parsed and handed over,
events acked, Engine.IO pings answered. It neither resumes nor reconnects:
seq jumps and disconnects are counted, not repaired (LiveClient's job,
tested in tests/unit/gateway/test_client.py and tests/integration/test_push.py).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from gateway.channels import NAMESPACE

__all__ = ["WireClient", "WireStats"]

# Engine.IO v4 packet types (first character) and Socket.IO v5 ones (second, inside an EIO message).
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE = "0", "1", "2", "3", "4"
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ACK, SIO_CONNECT_ERROR = "0", "1", "2", "3", "4"
_NS = NAMESPACE + ","
_UPDATE = f'{EIO_MESSAGE}{SIO_EVENT}{_NS}["update",'  # what the gateway's fan-out sends
_ACK = f"{EIO_MESSAGE}{SIO_ACK}{_NS}"


class WireError(Exception):
    """The gateway refused or broke the handshake or a subscription."""


@dataclass
class WireStats:
    delivered: int = 0
    duplicates: int = 0  # seqs seen before
    gaps: int = 0  # seq jumps the gateway did not declare (`skipped`); counted, not repaired
    acks: int = 0
    disconnects: int = 0


class WireClient:
    """One /live connection: connect with a token, subscribe with acks, read updates until closed."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str,
                 on_update: Callable[[dict[str, Any]], None]) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        self.token = token
        self.on_update = on_update
        self.stats = WireStats()
        self.last: dict[str, int] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float = 30) -> None:
        """Engine.IO open, then the Socket.IO CONNECT to /live with `auth: {token}`; raises WireError if refused."""
        self._ws = await self.session.ws_connect(self.url, timeout=aiohttp.ClientWSTimeout(ws_close=timeout_s),
                                                 autoping=False, max_msg_size=0)
        opened = await asyncio.wait_for(self._ws.receive_str(), timeout_s)
        if not opened.startswith(EIO_OPEN):
            raise WireError(f"expected an Engine.IO open packet, got {opened[:40]!r}")
        await self._ws.send_str(f"{EIO_MESSAGE}{SIO_CONNECT}{_NS}{json.dumps({'token': self.token})}")
        while True:
            reply = await asyncio.wait_for(self._ws.receive_str(), timeout_s)
            if reply == EIO_PING:
                await self._ws.send_str(EIO_PONG)
            elif reply.startswith(f"{EIO_MESSAGE}{SIO_CONNECT}{_NS}"):
                break
            else:  # 44/live,{"message": ...}: refused
                raise WireError(f"connect refused: {reply[:200]}")
        self._reader = asyncio.create_task(self._read())

    async def subscribe(self, channel: str, timeout_s: float = 60) -> dict[str, Any]:
        """The real `subscribe` event with an ack id; the ack, which must say ok."""
        ack = await asyncio.wait_for(self._call("subscribe", {"channel": channel}), timeout_s)
        if not isinstance(ack, dict) or not ack.get("ok"):
            raise WireError(f"subscribe {channel} refused: {ack}")
        if ack.get("seq", 0) > self.last.get(channel, 0):
            self.last[channel] = ack["seq"]
        return ack

    def _call(self, event: str, data: Any) -> asyncio.Future[Any]:
        assert self._ws is not None
        ack_id, self._next_id = self._next_id, self._next_id + 1
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = done
        frame = f"{EIO_MESSAGE}{SIO_EVENT}{_NS}{ack_id}{json.dumps([event, data])}"
        asyncio.ensure_future(self._ws.send_str(frame))
        return done

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                self._on_frame(msg.data)
        finally:
            self.stats.disconnects += 1
            for done in self._acks.values():
                if not done.done():
                    done.set_exception(WireError("disconnected"))

    def _on_frame(self, text: str) -> None:
        if text.startswith(_UPDATE):
            self._on_update(json.loads(text[len(_UPDATE):-1]))
        elif text == EIO_PING:
            asyncio.ensure_future(self._send(EIO_PONG))
        elif text.startswith(_ACK):  # 43/live,<id>[<ack>]
            body = text[len(_ACK):]
            bracket = body.index("[")
            done = self._acks.pop(int(body[:bracket]), None)
            if done is not None and not done.done():
                done.set_result(json.loads(body[bracket:])[0])

    def _on_update(self, update: dict[str, Any]) -> None:
        """As LiveClient hands updates over: a seq seen before is dropped (and re-acked), events are acked."""
        channel, seq = update["channel"], update["seq"]
        last = self.last.get(channel, 0)
        if seq <= last:
            self.stats.duplicates += 1
        else:
            if seq - update.get("skipped", 0) > last + 1:
                self.stats.gaps += 1
            self.last[channel] = seq
            self.stats.delivered += 1
            self.on_update(update)
        if update.get("ack"):
            self.stats.acks += 1
            payload = json.dumps(["ack", {"channel": channel, "seq": self.last[channel]}])
            asyncio.ensure_future(self._send(f"{EIO_MESSAGE}{SIO_EVENT}{_NS}{payload}"))

    async def _send(self, frame: str) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(frame)

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(f"{EIO_MESSAGE}{SIO_DISCONNECT}{_NS}")
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
