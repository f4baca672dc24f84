"""Push capacity and the legacy comparison: N Socket.IO clients on one gateway versus polling GET.

One gateway process; D drivers ping at 1 Hz, moving 6 m a ping, so the push
policy (10 m or 5 s) pushes every second ping: each client gets an update
every 2 s, as a rider watching a car in town would. N clients (default
5,000, spread over several processes) each watch one driver; every update
they get is timed from the ping's POST (`data.ts`) to its arrival: fan-out
p50/p95/p99 across all N (ingest and the worker included), and the part of it
before the gateway fans out (its event-to-emit histogram). The clients are
bench.wire's, which speak Engine.IO v4 / Socket.IO v5 over aiohttp websockets
(token in the handshake, `subscribe` with its ack, every `update` read,
events acked), not gateway.client.LiveClient: on a 2-core machine 5,000
python-socketio clients took 47-52% CPU, CPU the gateway needs, and their run
queues were most of the measured latency (LiveClient's resume and repair are
tested in tests/). Connect success counts the
clients that connected and subscribed at the first attempt; bytes per
connection is the gateway's RSS growth over the connections, taken before
any update flows. Every second each client's shown position is aged (now -
its `ts`): push staleness.

The legacy scenario on the same drivers: M clients per period poll
`GET /v1/drivers/{id}` every 60 s (and every 10 s), each at a random phase;
each is sampled every second over one whole period after its first GET, so
the ages are the steady state's. GETs are counted per client-hour; the push
clients' GETs are the gateway's GET count minus the pollers' own (0: a
subscribe ack carries the snapshot, reconnections resume over the socket).

    python -m bench.push [--clients 5000] [--drivers 100] [--duration 30] [--poll-clients 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import time
from typing import Any

import aiohttp
import psutil

from bench.e2e import _run_sender
from bench.harness import (
    bench_settings, bucket_quantile, counter_total, emit, histogram_buckets, percentiles, pipeline_running, scrape,
)
from bench.wire import WireClient
from gateway.auth import Tokens
from infra.processes import raise_open_files_limit
from infra.settings import Settings

WARMUP_S = 5.0  # drivers ping before the push window opens (the broker JIT-compiles, queues settle)
CONNECT_BATCH = 100  # connections a client process opens at once
SAMPLE_EVERY_S = 1.0


def driver_ids(n: int) -> list[str]:
    return [f"push-{i:04d}" for i in range(n)]


# --- push clients (child processes) --------------------------------------------------------------------


class _Watchers:
    """One process's clients (bench.wire): each watches one driver; arrivals timed against the ping's POST time."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, channels: list[str]) -> None:
        self.channels = channels
        self.shown_ts: list[float | None] = [None] * len(channels)
        self.recording = False
        self.latencies: list[float] = []
        self.clients = [WireClient(session, url, token, on_update=self._recorder(i)) for i in range(len(channels))]

    def _recorder(self, i: int) -> Any:
        def on_update(update: dict[str, Any]) -> None:
            ts = update["data"]["ts"]
            self.shown_ts[i] = ts
            if self.recording:
                self.latencies.append(time.time() * 1000 - ts)
        return on_update

    async def connect(self) -> int:
        """Connect and subscribe every client once (no retries); how many made it."""
        ok = 0
        for start in range(0, len(self.clients), CONNECT_BATCH):
            batch = range(start, min(start + CONNECT_BATCH, len(self.clients)))
            results = await asyncio.gather(*(self._connect_one(i) for i in batch), return_exceptions=True)
            ok += sum(r is True for r in results)
        return ok

    async def _connect_one(self, i: int) -> bool:
        client = self.clients[i]
        await client.connect(timeout_s=30)
        await client.subscribe(self.channels[i])
        return True

    async def measure(self, window_s: float) -> list[float]:
        """Record arrivals for window_s; sample every client's shown age each second."""
        self.recording = True
        staleness: list[float] = []
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            await asyncio.sleep(SAMPLE_EVERY_S)
            now = time.time() * 1000
            staleness.extend(now - ts for ts in self.shown_ts if ts is not None)
        self.recording = False
        return staleness

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


def watch_process(url: str, token: str, channels: list[str], window_s: float, ready: Any, go: Any, out: Any,
                  done: Any) -> None:
    """Child process: connect its share of clients, report, wait for `go`, measure, report; close at `done`."""
    raise_open_files_limit()

    async def main() -> None:
        # limit=0: every websocket holds its connection for good; the default pool of 100 would queue the rest.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            watchers = _Watchers(session, url, token, channels)
            loop = asyncio.get_running_loop()
            connected = await watchers.connect()
            ready.put(connected)
            await loop.run_in_executor(None, go.wait)
            cpu0, t0 = time.process_time(), time.perf_counter()
            staleness = await watchers.measure(window_s)
            cpu_pct = (time.process_time() - cpu0) / (time.perf_counter() - t0) * 100
            stats = [c.stats for c in watchers.clients]
            out.put({"connected": connected, "latencies": watchers.latencies, "staleness": staleness,
                     "cpu_pct": cpu_pct, "gaps": sum(s.gaps for s in stats),
                     "duplicates": sum(s.duplicates for s in stats),
                     "disconnects": sum(s.disconnects for s in stats)})
            # Not before the parent has read the gateway's counters: 5,000 disconnects at once hold its loop.
            await loop.run_in_executor(None, done.wait)
            await watchers.close()

    asyncio.run(main())


# --- pollers (child process) ---------------------------------------------------------------------------


async def _get(host: str, port: int, path: str, token: str, conns: asyncio.Queue) -> tuple[int, dict | None]:
    """One keep-alive GET over a pooled raw HTTP/1.1 connection (aiohttp's client costs more than the server)."""
    reader, writer = await conns.get()
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:")
        body = await reader.readexactly(length)
        return int(head[9:12]), json.loads(body)
    finally:
        conns.put_nowait((reader, writer))


async def _poll_all(url: str, token: str, drivers: list[str], clients: int, period_s: float,
                    seed: int) -> dict[str, Any]:
    """`clients` pollers of one period: first GET at a random phase, then every period; each sampled
    every second during the one whole period after its first GET."""
    host, port = url.split("//")[1].split(":")
    conns: asyncio.Queue = asyncio.Queue()
    for _ in range(16):
        conns.put_nowait(await asyncio.open_connection(host, int(port)))
    rng = random.Random(seed)
    start = time.monotonic()
    phases = [rng.uniform(0, period_s) for _ in range(clients)]
    shown: list[float | None] = [None] * clients
    gets = errors = 0

    async def poller(i: int) -> None:
        nonlocal gets, errors
        path = f"/v1/drivers/{drivers[i % len(drivers)]}"
        for k in range(2):  # the GET at its phase, and the one a period later: one whole period sampled
            await asyncio.sleep(max(0.0, start + phases[i] + k * period_s - time.monotonic()))
            status, body = await _get(host, int(port), path, token, conns)
            gets += 1
            if status == 200 and body is not None:
                shown[i] = body["ts"]
            else:
                errors += 1

    staleness: list[float] = []

    async def sampler() -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            now_mono, now = time.monotonic() - start, time.time() * 1000
            staleness.extend(now - ts for i, ts in enumerate(shown)
                             if ts is not None and phases[i] <= now_mono < phases[i] + period_s)

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*(poller(i) for i in range(clients)))
    sampling.cancel()
    for _, writer in [conns.get_nowait() for _ in range(conns.qsize())]:
        writer.close()
    return {"period_s": period_s, "clients": clients, "gets": gets, "errors": errors, "staleness": staleness}


def poll_process(url: str, token: str, drivers: list[str], clients: int, periods: list[float], out: Any) -> None:
    """Child process: every period's pollers at once; report each period's counts and ages."""
    raise_open_files_limit()

    async def main() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_poll_all(url, token, drivers, clients, p, seed=int(p))
                                           for p in periods)))

    out.put(asyncio.run(main()))


# --- the run -------------------------------------------------------------------------------------------


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[k::parts] for k in range(parts)]


def measure(settings: Settings, gateway: psutil.Process, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    tokens = Tokens(settings)
    token = tokens.mint("ops", "bench-push", ttl_s=3600)
    drivers = driver_ids(args.drivers)
    metrics_url = f"{settings.gateway_url}/metrics"
    poll_periods = [float(p) for p in args.poll_periods.split(",")]
    poll_window_s = 2 * max(poll_periods)
    # Every driver once, so every channel has a snapshot before anyone subscribes.
    seed, seed_out = _run_sender(settings.gateway_url, token, drivers, len(drivers), 1.0, 1)
    seed_out.get()
    seed.join()

    rss0 = gateway.memory_info().rss
    ready, go, out, done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    channels = [f"driver:{drivers[i % len(drivers)]}" for i in range(args.clients)]
    procs = [ctx.Process(target=watch_process,
                         args=(settings.gateway_url, token, share, args.duration, ready, go, out, done))
             for share in _split(channels, args.processes)]
    t_connect = time.perf_counter()
    for p in procs:
        p.start()
    connected = sum(ready.get(timeout=600) for _ in procs)
    connect_s = time.perf_counter() - t_connect
    time.sleep(2.0)  # let the gateway settle its buffers before weighing it
    rss1 = gateway.memory_info().rss

    sender, sender_out = _run_sender(settings.gateway_url, token, drivers, len(drivers) * args.hz,
                                     WARMUP_S + max(args.duration, poll_window_s) + 5, 2, args.step_m)
    poll_out = ctx.Queue()
    poller = ctx.Process(target=poll_process,
                         args=(settings.gateway_url, token, drivers, args.poll_clients, poll_periods, poll_out))
    time.sleep(WARMUP_S)  # every driver has moved since its seed ping before anyone looks
    psutil.cpu_percent()
    cpu0, t0, m0 = gateway.cpu_times(), time.perf_counter(), scrape(metrics_url)  # one scrape per window edge
    go.set()
    poller.start()
    pushed = [out.get(timeout=args.duration + 600) for _ in procs]
    cpu1, t1, m1 = gateway.cpu_times(), time.perf_counter(), scrape(metrics_url)
    emit0, emit1 = (histogram_buckets(m, "livetrack_event_to_emit_seconds") for m in (m0, m1))

    def grew(name: str) -> int:
        return int(counter_total(m1, name) - counter_total(m0, name))

    window = {"gateway_frames_sent": grew("livetrack_push_emits"),  # in the window, give or take a second
              "gateway_frames_direct": grew("livetrack_push_direct_emits"),  # of those, written straight
              # ping POST -> the gateway fans its update out (ingest, Kafka, worker): the rest is delivery
              "event_to_emit_p50_ms": bucket_quantile(emit0, emit1, 0.5),
              "event_to_emit_p95_ms": bucket_quantile(emit0, emit1, 0.95),
              "gateway_cpu_pct": round((sum(cpu1[:2]) - sum(cpu0[:2])) / (t1 - t0) * 100, 1),
              "machine_cpu_pct": round(psutil.cpu_percent() * psutil.cpu_count(), 1),
              "load_avg_1m": round(psutil.getloadavg()[0], 2)}
    done.set()
    for p in procs:
        p.join()
    polled = poll_out.get(timeout=poll_window_s + 600)
    poller.join()
    reads = counter_total(scrape(metrics_url), "livetrack_driver_reads") - counter_total(m0, "livetrack_driver_reads")
    sender_out.get()
    sender.join()
    return {**_figures(args, polled, pushed, connected, connect_s, rss1 - rss0, reads), **window}


def _figures(args: argparse.Namespace, polled: list[dict[str, Any]], pushed: list[dict[str, Any]], connected: int,
             connect_s: float, rss_growth: int, reads: float) -> dict[str, Any]:
    latencies = [v for r in pushed for v in r["latencies"]]
    push_staleness = [v for r in pushed for v in r["staleness"]]
    poll_gets = sum(p["gets"] for p in polled)
    # GETs the push clients made: whatever the gateway answered beyond the pollers' own.
    push_gets_per_client_hour = max(0.0, reads - poll_gets) / max(1, connected) / args.duration * 3600
    figures: dict[str, Any] = {"clients": args.clients, "drivers": args.drivers, "driver_hz": args.hz,
                               "driver_step_m": args.step_m,
                               "connect_success_pct": round(100 * connected / args.clients, 3),
                               "connect_s": round(connect_s, 1)}
    figures.update(percentiles(latencies, "fanout"))
    figures["fanout_updates"] = len(latencies)
    figures["bytes_per_connection"] = int(rss_growth / max(1, connected))
    figures["clients_cpu_pct"] = round(sum(r["cpu_pct"] for r in pushed), 1)  # the client processes, in the window
    figures["push_gaps"] = sum(r["gaps"] for r in pushed)  # undeclared seq jumps (the bench client does not resume)
    figures["push_duplicates"] = sum(r["duplicates"] for r in pushed)
    figures["push_disconnects"] = sum(r["disconnects"] for r in pushed)  # during the window (none reconnect)
    figures["push_staleness_p95_ms"] = percentiles(push_staleness, "s")["s_p95_ms"]
    figures["push_gets_per_client_hour"] = round(push_gets_per_client_hour, 2)
    for p in polled:
        tag = "poll" if p["period_s"] == 60 else f"poll{int(p['period_s'])}"
        # Each poller made its first GET, then one a period later: (gets - clients) GETs per period.
        per_hour = (p["gets"] - p["clients"]) / p["clients"] / p["period_s"] * 3600
        figures[f"{tag}_gets_per_client_hour"] = round(per_hour, 1)
        figures[f"{tag}_get_reduction_pct"] = round(100 * (1 - push_gets_per_client_hour / per_hour), 2)
        figures[f"{tag}_staleness_p95_ms"] = percentiles(p["staleness"], "s")["s_p95_ms"]
        figures[f"{tag}_errors"] = p["errors"]
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = bench_settings(app_id=f"livetrack-push-{int(time.time())}")
    with pipeline_running(settings, "push") as (_, gateway):
        return measure(settings, gateway.ps, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=5000, help="Socket.IO clients on the one gateway")
    p.add_argument("--drivers", type=int, default=100, help="drivers (the clients watch them evenly)")
    p.add_argument("--hz", type=float, default=1.0, help="pings per second per driver")
    p.add_argument("--step-m", type=float, default=6.0,
                   help="metres a driver moves per ping (6: the 10 m push threshold pushes every 2nd ping)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds the push clients are measured")
    p.add_argument("--processes", type=int, default=4, help="client processes the push clients are spread over")
    p.add_argument("--poll-clients", type=int, default=1000, help="polling clients per period")
    p.add_argument("--poll-periods", default="60,10", help="polling periods, seconds (60 is the reference)")
    args = p.parse_args()
    raise_open_files_limit()
    emit(run(args))


if __name__ == "__main__":
    main()
