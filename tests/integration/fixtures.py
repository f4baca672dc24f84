"""A running pipeline for integration tests: worker and gateway as real processes."""
from __future__ import annotations

import asyncio
import random
import shutil
import signal
import socket
import time
from typing import Any

import socketio

from gateway.auth import Tokens
from infra.processes import WORKER_READY, Proc, gateway_args, spawn, wait_http_ok, worker_args
from infra.settings import Settings
from infra.topics import end_offsets, read_topic

__all__ = ["DropProxy", "Pipeline", "Subscriber", "end_offsets", "read_topic", "ping"]


def ping(driver: str, seq: int, *, step_m: float = 100.0, ts: int | None = None) -> dict[str, Any]:
    """A valid ping: the driver moves `step_m` north per seq, one second per seq."""
    return {"driver_id": driver, "seq": seq, "lat": 37.7749 + seq * step_m / 111_195, "lng": -122.4194,
            "ts": ts if ts is not None else 1_700_000_000_000 + seq * 1000, "speed": 10.0}


class Pipeline:
    """Worker and gateway processes for one settings object; stopped by PID."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker: Proc | None = None
        self.gateway: Proc | None = None
        self.tokens = Tokens(settings)

    @property
    def url(self) -> str:
        return self.settings.gateway_url

    def token(self, role: str = "ops", sub: str = "it-ops", ttl_s: float | None = None) -> str:
        return self.tokens.mint(role, sub, ttl_s)

    def headers(self, role: str = "ops", sub: str = "it-ops") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    def start_worker(self, timeout_s: float = 90) -> None:
        self.worker = spawn(worker_args(), self.settings, "worker")
        self.worker.wait_for_output(WORKER_READY, timeout_s)

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        assert self.worker is not None
        self.worker.stop(sig)
        self.worker = None

    def wipe_worker_state(self) -> None:
        """Remove the worker's RocksDB files: state must come back from the changelog."""
        shutil.rmtree(self.settings.state_dir / "worker" / self.settings.app_id, ignore_errors=True)

    async def start_gateway(self, timeout_s: float = 30) -> None:
        self.gateway = spawn(gateway_args(), self.settings, "gateway")
        await asyncio.to_thread(wait_http_ok, f"{self.url}/healthz", [self.gateway], timeout_s)

    def stop(self) -> None:
        for proc in (self.gateway, self.worker):
            if proc is not None:
                proc.stop()


class Subscriber:
    """An official python-socketio client on /live that queues the updates it receives."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.auth = {"token": token} if token else None
        self.sio = socketio.AsyncClient(reconnection=False)
        self.updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sio.on("update", self.updates.put_nowait, namespace="/live")

    async def __aenter__(self) -> "Subscriber":
        await self.sio.connect(self.url, namespaces=["/live"], transports=["websocket"], auth=self.auth)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sio.disconnect()

    async def subscribe(self, channel: str, since: int | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"channel": channel} if since is None else {"channel": channel, "since": since}
        return await self.sio.call("subscribe", request, namespace="/live", timeout=10)  # type: ignore[no-any-return]

    async def next(self, timeout_s: float = 20) -> dict[str, Any]:
        return await asyncio.wait_for(self.updates.get(), timeout_s)

    async def next_of(self, kind: str, timeout_s: float = 15, **match: Any) -> dict[str, Any]:
        """The next update of type `kind` whose data has the `match` items (others are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            update = await self.next(max(0.1, deadline - time.monotonic()))
            if update["type"] == kind and all(update["data"].get(k) == v for k, v in match.items()):
                return update


class DropProxy:
    """A TCP proxy in front of the gateway that can cut its connections abruptly, as a network does."""

    def __init__(self, upstream_port: int, *, small_buffers: bool = False) -> None:
        self.upstream_port = upstream_port
        # Small socket and reader buffers towards the gateway: a stalled link backs up into the gateway
        # after kilobytes, not the megabytes loopback would otherwise absorb.
        self.small_buffers = small_buffers
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.flowing = asyncio.Event()  # cleared: nothing from the gateway reaches the clients
        self.flowing.set()

    async def __aenter__(self) -> "DropProxy":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=2048)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.drop(1.0)
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop(self, fraction: float, rng: random.Random | None = None) -> int:
        """Abort `fraction` of the open connections on both sides (no close handshake); how many."""
        links = sorted(self.links, key=id)
        chosen = links if fraction >= 1 else (rng or random.Random()).sample(links, int(len(links) * fraction))
        for client, upstream in chosen:
            client.transport.abort()
            upstream.transport.abort()
            self.links.discard((client, upstream))
        return len(chosen)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.small_buffers:
            return await asyncio.open_connection("127.0.0.1", self.upstream_port)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: fixes the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.upstream_port))
        return await asyncio.open_connection(sock=sock, limit=4096)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await self._connect_upstream()
        except OSError:
            client_w.transport.abort()
            return
        link = (client_w, up_w)
        self.links.add(link)
        try:
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w, self.flowing))
        finally:
            self.links.discard(link)
            client_w.transport.abort()
            up_w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                flowing: asyncio.Event | None = None) -> None:
    try:
        while (flowing is None or await flowing.wait()) and (data := await reader.read(65536)):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


