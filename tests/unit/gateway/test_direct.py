"""gateway.direct: the shared WebSocket frame, and when it may skip Engine.IO's queue."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp._websocket.writer import WebSocketWriter

from gateway.direct import Link, text_frame


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Ws:
    def __init__(self, transport: _Transport) -> None:
        self.closed = False
        self.compress = 0
        self._writer = WebSocketWriter(None, transport)  # type: ignore[arg-type]


class _Socket:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.upgraded = True
        self.closed = False
        self.transport = _Transport()
        self.direct_ws: _Ws | None = _Ws(self.transport)


def write_direct(socket: _Socket, frame: bytes) -> bool:
    """As the fan-out writes: through the socket's Link, which only an open websocket has."""
    ws = socket.direct_ws
    if ws is None:
        return False
    link = Link("sid", socket, ws, socket.queue, socket.queue._getters, ws._writer.transport)  # type: ignore[arg-type]
    return link.write(frame)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
async def test_the_frame_is_what_aiohttp_writes(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    transport = _Transport()
    await WebSocketWriter(None, transport).send_frame(text.encode(), 0x1)  # type: ignore[arg-type]
    assert text_frame(text) == b"".join(transport.written)


async def _parked(socket: _Socket) -> asyncio.Task[Any]:
    """A stand-in for Engine.IO's writer task, waiting on the socket's queue."""
    task = asyncio.create_task(socket.queue.get())
    await asyncio.sleep(0)
    return task


async def test_a_socket_that_keeps_up_gets_the_frame_on_its_transport() -> None:
    socket = _Socket()
    writer = await _parked(socket)
    assert write_direct(socket, b"frame")
    assert socket.transport.written == [b"frame"] and socket.queue.empty()
    writer.cancel()


async def test_anything_ahead_of_the_frame_sends_it_through_the_queue() -> None:
    socket = _Socket()
    assert not write_direct(socket, b"f")  # the writer is busy sending what it polled
    writer = await _parked(socket)
    socket.queue.put_nowait("ack")  # queued, its writer woken but not run yet
    assert not write_direct(socket, b"f")
    await writer
    writer = await _parked(socket)
    socket.transport.buffered = 10  # the client is not draining
    assert not write_direct(socket, b"f")
    socket.transport.buffered = 0
    for block in ("compress", "closed", "upgrading", "no websocket"):
        blocked = _Socket()
        parked = await _parked(blocked)
        if block == "compress":
            blocked.direct_ws.compress = 15  # type: ignore[union-attr]
        elif block == "closed":
            blocked.direct_ws.closed = True  # type: ignore[union-attr]
        elif block == "upgrading":
            blocked.upgraded = False
        else:
            blocked.direct_ws = None
        assert not write_direct(blocked, b"f"), block
        parked.cancel()
    assert socket.transport.written == []
    writer.cancel()
