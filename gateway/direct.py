"""Every use the gateway makes of python-engineio, python-socketio, aiohttp and asyncio below their
public APIs, in this one module, each guarded.

Why any: the fan-out's fast path. python-engineio sends through a queue and a
writer task per socket: every frame wakes that task, which builds an
Engine.IO and a WebSocket frame and arms a timer (the largest part of the
gateway's CPU at 5,000 clients in a py-spy profile). A server's frames are
unmasked, so for a connection without per-message compression the bytes of
an update's frame are the same for everyone: built once, they go straight to
the transport when nothing is ahead of them, that is when the socket's
Engine.IO queue is empty, its writer task is parked waiting on it (so it
holds no frame it polled), and the transport's buffer is empty (the client
keeps up). Anything else takes Engine.IO's queue as before, where the backlog
marks a slow connection.

What is reached, by the names in the table below (tests rename them to act
out an upgrade), and only when a websocket opens, except where noted:

- engineio.AsyncServer._async["websocket"]: the aiohttp websocket driver
  class, replaced for one server by a subclass that makes each open websocket
  known as a `Link` (`Engine.__init__`);
- the handler engineio gives that driver, its socket's bound
  `_websocket_handler`: `__self__` is the AsyncSocket;
- the driver's `_sock`: the aiohttp WebSocketResponse; its `_writer`: the
  WebSocketWriter, whose `transport` is the connection's;
- the AsyncSocket's `queue` (an asyncio.Queue) and that queue's `_getters`:
  the futures of the tasks parked in get(), that is the socket's writer task;
- the AsyncSocket's `upgraded` and `closed` (read on every write);
- engineio.AsyncServer.sockets: sid -> AsyncSocket, for a socket's backlog
  (on the slow path, every time);
- the text python-socketio puts before an EVENT's argument (`event_prefix`):
  derived from its own encoder and checked by decoding, not written by hand.

When one is missing, it is reported once (a warning, and `on_missing`: the
`livetrack_push_internals_missing{name}` gauge) and the fan-out sends through
Engine.IO's public `send_packet` instead, which the frames counter tells
apart (`livetrack_push_frames{path="fallback"}`): slower, never lost.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import struct
from collections import deque
from typing import Any, Awaitable, Callable

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

__all__ = ["Engine", "Link", "event_prefix", "text_frame"]

log = logging.getLogger(__name__)

# The names read below the public APIs (see the module's docstring).
ASYNC_DRIVERS = "_async"  # engineio.AsyncServer
HANDLER_SOCKET = "__self__"  # the bound AsyncSocket._websocket_handler given to the websocket driver
WS_RESPONSE = "_sock"  # engineio.async_drivers.aiohttp.WebSocket
WS_WRITER = "_writer"  # aiohttp.web.WebSocketResponse
SOCKET_QUEUE = "queue"  # engineio.async_socket.AsyncSocket
SOCKET_UPGRADED = "upgraded"  # AsyncSocket (read as `.upgraded` in Link.write, for speed)
SOCKET_CLOSED = "closed"  # AsyncSocket (read as `.closed` in Link.write)
QUEUE_GETTERS = "_getters"  # asyncio.Queue
SERVER_SOCKETS = "sockets"  # engineio.AsyncServer
EVENT_ENCODING = "socketio.packet.Packet.encode (EVENT)"  # not an attribute: the wire format event_prefix derives

_WS_TEXT = 0x81  # FIN + text opcode


def text_frame(text: str) -> bytes:
    """An unmasked, uncompressed, final WebSocket text frame carrying `text` (RFC 6455 5.2)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _WS_TEXT, n)
    elif n < 65536:
        header = struct.pack("!BBH", _WS_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _WS_TEXT, 127, n)
    return header + payload


@functools.cache
def event_prefix(namespace: str, event: str) -> str | None:
    """The text python-socketio encodes before the one argument of an EVENT `event` on `namespace`
    (a `]` follows it); None when its encoder no longer reads back that way (encode the whole packet)."""
    sample = {"k": ["v", 1]}
    encoded = socketio.packet.Packet(socketio.packet.EVENT, data=[event, sample], namespace=namespace).encode()
    tail = json.dumps(sample, separators=(",", ":")) + "]"
    if not isinstance(encoded, str) or not encoded.endswith(tail):
        return None
    prefix = encoded[:-len(tail)]
    probe = {"channel": "x", "data": {"s": "é\"]"}}
    try:
        decoded = socketio.packet.Packet(encoded_packet=prefix + json.dumps(probe) + "]")
    except Exception:  # whatever the decoder raises on text it does not read
        return None
    if (decoded.packet_type, decoded.namespace, decoded.data) != (socketio.packet.EVENT, namespace, [event, probe]):
        return None
    return prefix


class Link:
    """One open, upgraded websocket of an Engine.IO socket: what a direct write needs, taken once."""

    __slots__ = ("sid", "socket", "response", "queue", "getters", "transport")

    def __init__(self, sid: str, socket: Any, response: web.WebSocketResponse, queue: asyncio.Queue[Any],
                 getters: deque[asyncio.Future[Any]], transport: asyncio.Transport) -> None:
        self.sid = sid
        self.socket = socket
        self.response = response
        self.queue = queue
        self.getters = getters  # the queue's own deque: asyncio never replaces it
        self.transport = transport  # the writer's, fixed when the response was prepared

    def write(self, frame: bytes) -> bool:
        """Write `frame` to the transport when nothing can be ahead of it; False: use Engine.IO's queue.

        Raises AttributeError when the socket lost `upgraded` or `closed` (the Engine reports it)."""
        socket, response = self.socket, self.response
        if socket.closed or not socket.upgraded or response.closed or response.compress or self.queue.qsize():
            return False
        getters = self.getters  # the writer task, parked in poll(): it has sent all it took
        if len(getters) != 1 or getters[0].done():
            return False
        transport = self.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(frame)
        return True


class Engine:
    """The fan-out's view of one Engine.IO server: direct writes, backlogs, and the public send."""

    def __init__(self, eio: engineio.AsyncServer, *, namespace: str, event: str,
                 on_missing: Callable[[str], None] = lambda name: None) -> None:
        self.eio = eio
        self.links: dict[str, Link] = {}  # engine.io sid -> its open websocket
        self.missing: set[str] = set()
        self._on_missing = on_missing
        if event_prefix(namespace, event) is None:
            self.report(EVENT_ENCODING)
        self._install()

    @property
    def degraded(self) -> bool:
        """True once something this module reaches was missing: frames that are not direct are fallbacks."""
        return bool(self.missing)

    def report(self, name: str) -> None:
        if name not in self.missing:
            self.missing.add(name)
            log.warning("%s is missing (a library upgrade?): /live frames take Engine.IO's send_packet", name)
            self._on_missing(name)

    def _install(self) -> None:
        """Put a websocket driver that makes each websocket known in place of this server's own (a copy
        of its driver table: other servers keep theirs)."""
        drivers: object = getattr(self.eio, ASYNC_DRIVERS, None)
        base = drivers.get("websocket") if isinstance(drivers, dict) else None
        if not (isinstance(drivers, dict) and isinstance(base, type) and issubclass(base, eio_aiohttp.WebSocket)):
            self.report(f"engineio.AsyncServer.{ASYNC_DRIVERS}['websocket'] (the aiohttp driver)")
            return
        setattr(self.eio, ASYNC_DRIVERS, {**drivers, "websocket": _linked_websocket(self, base)})

    def open(self, handler: Any, ws: Any) -> Link | None:
        """The Link of a websocket whose handler is starting (prepared by now); None when it cannot be made."""
        socket = getattr(handler, HANDLER_SOCKET, None)
        if not isinstance(socket, AsyncSocket):
            self.report(f"engineio's websocket handler.{HANDLER_SOCKET} (its AsyncSocket)")
            return None
        response = getattr(ws, WS_RESPONSE, None)
        if not isinstance(response, web.WebSocketResponse):
            self.report(f"engineio.async_drivers.aiohttp.WebSocket.{WS_RESPONSE}")
            return None
        transport = getattr(getattr(response, WS_WRITER, None), "transport", None)
        if transport is None or not all(hasattr(transport, m) for m in ("write", "is_closing",
                                                                        "get_write_buffer_size")):
            self.report(f"aiohttp.web.WebSocketResponse.{WS_WRITER}.transport")
            return None
        queue = getattr(socket, SOCKET_QUEUE, None)
        if not isinstance(queue, asyncio.Queue):
            self.report(f"engineio.async_socket.AsyncSocket.{SOCKET_QUEUE}")
            return None
        getters = getattr(queue, QUEUE_GETTERS, None)
        if not isinstance(getters, deque):
            self.report(f"asyncio.Queue.{QUEUE_GETTERS}")
            return None
        for name in (SOCKET_UPGRADED, SOCKET_CLOSED):
            if not isinstance(getattr(socket, name, None), bool):
                self.report(f"engineio.async_socket.AsyncSocket.{name}")
                return None
        link = Link(socket.sid, socket, response, queue, getters, transport)
        self.links[link.sid] = link
        return link

    def close(self, link: Link) -> None:
        if self.links.get(link.sid) is link:
            del self.links[link.sid]

    def write(self, link: Link, frame: bytes) -> bool:
        """`link.write` for callers off the hot path: a socket that lost an attribute is reported and unlinked."""
        try:
            return link.write(frame)
        except AttributeError as exc:
            self.broken(link, exc)
            return False

    def broken(self, link: Link, exc: AttributeError) -> None:
        """`link`'s socket no longer has what write() reads: report it, and never write to it directly again."""
        self.report(f"{type(exc.obj).__name__}.{exc.name}" if exc.name else str(exc))
        self.close(link)

    def backlog(self, eio_sid: str) -> int | None:
        """Frames waiting in the socket's Engine.IO queue; None once it is closed or gone; 0 when that
        cannot be told (then the public send queues it all the same)."""
        link = self.links.get(eio_sid)
        if link is not None:
            socket: object = link.socket
        else:
            sockets = getattr(self.eio, SERVER_SOCKETS, None)
            if not isinstance(sockets, dict):
                self.report(f"engineio.AsyncServer.{SERVER_SOCKETS}")
                return 0
            socket = sockets.get(eio_sid)
            if socket is None:
                return None
        queue, closed = getattr(socket, SOCKET_QUEUE, None), getattr(socket, SOCKET_CLOSED, None)
        if not isinstance(queue, asyncio.Queue):
            self.report(f"engineio.async_socket.AsyncSocket.{SOCKET_QUEUE}")
            return 0
        if not isinstance(closed, bool):
            self.report(f"engineio.async_socket.AsyncSocket.{SOCKET_CLOSED}")
            return 0
        return None if closed else queue.qsize()

    async def send(self, eio_sid: str, pkt: eio_packet.Packet) -> None:
        """Queue `pkt` for the socket through Engine.IO's public API (a socket gone meanwhile is skipped)."""
        await self.eio.send_packet(eio_sid, pkt)


def _linked_websocket(engine: Engine, base: type) -> type:
    """`base` (engineio's aiohttp websocket driver), making each of its websockets known to `engine` while open."""

    class LinkedWebSocket(base):  # type: ignore[misc]
        def __init__(self, handler: Callable[[Any], Awaitable[Any]], server: Any) -> None:
            async def handle(ws: Any) -> Any:
                link = engine.open(handler, ws)  # prepared by now: __call__ runs the handler after prepare()
                try:
                    return await handler(ws)
                finally:
                    if link is not None:
                        engine.close(link)

            super().__init__(handle, server)

    return LinkedWebSocket
