"""Event-to-screen latency: HTTP POST of a ping -> the subscribed Socket.IO client has its update.

A sender process posts one ping per request at a fixed rate (drivers at 1 Hz,
as phones ping); this process holds an official python-socketio client
subscribed to every driver's channel and timestamps each update on arrival.
Latency counts from the ping's `ts`, stamped as the POST is sent, so it includes ingest.
Every ping moves its driver past the push threshold, so each one must arrive.

    python -m bench.e2e [--rate 1000] [--duration 30]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from typing import Any

import socketio

from bench.harness import (
    CpuMeter, bench_settings, bucket_quantile, emit, histogram_buckets, percentiles, pipeline_running, scrape,
)
from bench.loadgen import post_at_rate
from gateway.auth import Tokens
from infra.settings import Settings

WARMUP_S = 10.0  # a fresh broker JIT-compiles its hot paths first


def ping(driver: str, seq: int, now_ms: int, step_m: float = 25.0) -> dict[str, Any]:
    """Driver moves `step_m` north per ping (25 m: always a pushed move, never a teleport)."""
    return {"driver_id": driver, "seq": seq, "lat": 37.70 + seq * step_m / 111_195, "lng": -122.45,
            "ts": now_ms, "speed": 25.0}


async def _send(url: str, token: str, drivers: list[str], rate: float, duration_s: float, first_seq: int,
                step_m: float = 25.0) -> dict:
    host, port = url.split("//")[1].split(":")
    n = int(rate * duration_s)

    def body(i: int) -> dict:  # `ts` is stamped now: the receiver's latency is arrival - ts
        return ping(drivers[i % len(drivers)], first_seq + i // len(drivers), int(time.time() * 1000), step_m)

    result = await post_at_rate(host, int(port), "/v1/locations", body, count=n, rate=rate,
                                headers={"Authorization": f"Bearer {token}"})
    accepted = result.statuses.get(202, 0)
    return {"sent": result.sent, "accepted": accepted, "errors": result.sent - accepted, "rate": result.rate}


def sender(url: str, token: str, drivers: list[str], rate: float, duration_s: float, first_seq: int,
           out: Any, step_m: float = 25.0) -> None:
    """Child process: post pings at the rate, then report counts."""
    out.put(asyncio.run(_send(url, token, drivers, rate, duration_s, first_seq, step_m)))


def _run_sender(url: str, token: str, drivers: list[str], rate: float, duration_s: float, first_seq: int,
                step_m: float = 25.0) -> Any:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=sender, args=(url, token, drivers, rate, duration_s, first_seq, out, step_m))
    proc.start()
    return proc, out


async def measure(settings: Settings, rate: float, duration_s: float) -> dict[str, Any]:
    drivers = [f"e2e-{i:05d}" for i in range(max(1, int(rate)))]  # 1 Hz each
    latencies: list[float] = []
    measured_from: list[int] = [10**9]  # seqs at or above this belong to the measured run

    def on_update(m: dict) -> None:
        if m["data"]["seq"] >= measured_from[0]:
            latencies.append(time.time() * 1000 - m["data"]["ts"])

    token = Tokens(settings).mint("ops", "bench-e2e")
    client = socketio.AsyncClient(reconnection=False)
    client.on("update", on_update, namespace="/live")
    await client.connect(settings.gateway_url, namespaces=["/live"], transports=["websocket"], auth={"token": token})
    await asyncio.gather(*(client.call("subscribe", {"channel": f"driver:{d}"}, namespace="/live", timeout=30)
                           for d in drivers))
    loop = asyncio.get_running_loop()
    warmup_pings = int(rate * WARMUP_S)
    after_warmup = 1 + -(-warmup_pings // len(drivers))  # each driver's next seq: no gap, no teleport
    for first_seq, secs in ((1, WARMUP_S), (after_warmup, duration_s)):  # warm-up, then the measured run
        measured_from[0] = first_seq if first_seq > 1 else 10**9
        emitted_before = _emit_buckets(settings)
        proc, out = _run_sender(settings.gateway_url, token, drivers, rate, secs, first_seq)
        result = await loop.run_in_executor(None, out.get)
        await loop.run_in_executor(None, proc.join)
        await asyncio.sleep(3.0)  # stragglers
    await client.disconnect()
    emitted = _emit_buckets(settings)
    return {
        "gateway_emit_p50_ms": bucket_quantile(emitted_before, emitted, 0.5),
        "gateway_emit_p95_ms": bucket_quantile(emitted_before, emitted, 0.95),
        "e2e_rate": round(result["rate"], 1), "e2e_sent": result["sent"], "e2e_received": len(latencies),
        "e2e_lost": result["accepted"] - len(latencies), "e2e_http_errors": result["errors"],
        **percentiles(latencies, "e2e"),
    }


def _emit_buckets(settings: Settings) -> dict[float, float]:
    """The gateway's event-to-emit histogram (cumulative counts by upper bound, seconds)."""
    return histogram_buckets(scrape(f"{settings.gateway_url}/metrics"), "livetrack_event_to_emit_seconds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0, help="pings per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured (after a warm-up)")
    args = p.parse_args()
    emit(run(args.rate, args.duration))


def run(rate: float, duration_s: float) -> dict[str, Any]:
    settings = bench_settings(app_id=f"livetrack-e2e-{int(time.time())}")
    with pipeline_running(settings, "e2e") as (worker, gateway):
        meter = CpuMeter(settings, worker, gateway)
        meter.start()
        figures = asyncio.run(measure(settings, rate, duration_s))
        figures.update(meter.stop())
    return figures


if __name__ == "__main__":
    main()
