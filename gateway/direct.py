"""The fan-out's fast path: one WebSocket frame per update, written as is to every socket that keeps up.

python-engineio sends through a queue and a writer task per socket: every
frame wakes that task, which builds an Engine.IO and a WebSocket frame and
arms a timer (the largest part of the gateway's CPU at 5,000 clients in a
py-spy profile). A server's frames are unmasked, so for a connection
without per-message compression the bytes of an update's frame are the same
for everyone: built once, they go straight to the transport when nothing is
ahead of them, that is when the socket's Engine.IO queue is empty, its
writer task is parked waiting on it (so it holds no frame it polled), and
the transport's buffer is empty (the client keeps up). Anything else takes
Engine.IO's queue as before, where the backlog marks a slow connection.
"""
from __future__ import annotations

import struct
from typing import Any, Awaitable, Callable

import engineio
from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp

__all__ = ["enable_direct_frames", "text_frame", "write_direct"]

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


class _KnownWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp websocket, made known to its socket (as `direct_ws`) while it is open."""

    def __init__(self, handler: Callable[[Any], Awaitable[Any]], server: Any) -> None:
        socket = getattr(handler, "__self__", None)  # the AsyncSocket whose _websocket_handler this is

        async def handle(ws: _KnownWebSocket) -> Any:
            if socket is not None:
                socket.direct_ws = ws._sock  # prepared by now: __call__ runs the handler after prepare()
            try:
                return await handler(ws)
            finally:
                if socket is not None:
                    socket.direct_ws = None

        super().__init__(handle, server)


def enable_direct_frames(eio: engineio.AsyncServer) -> None:
    """Let `write_direct` reach this server's websockets (a copy of the driver table: other servers keep theirs)."""
    eio._async = {**eio._async, "websocket": _KnownWebSocket}


def write_direct(socket: Any, frame: bytes) -> bool:
    """Write `frame` to the socket's transport when nothing can be ahead of it; False: use Engine.IO's queue."""
    ws: web.WebSocketResponse | None = getattr(socket, "direct_ws", None)
    if ws is None or not socket.upgraded or ws.closed or ws.compress or socket.queue.qsize():
        return False
    getters = socket.queue._getters  # the writer task, parked in poll(): it has sent all it took
    if len(getters) != 1 or getters[0].done():
        return False
    writer = ws._writer
    transport = writer.transport if writer is not None else None
    if transport is None or transport.is_closing() or transport.get_write_buffer_size():
        return False
    transport.write(frame)
    return True
