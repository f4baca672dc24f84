"""`livetrack demo`: broker, topics, the legacy bridge (PostgreSQL, Kafka Connect), worker, gateway, the fleet
and shop simulators and the legacy platform's simulated job, until Ctrl-C."""
from __future__ import annotations

import logging
import signal
import threading

from gateway.auth import Tokens
from infra.broker import kafka_running
from infra.connect import connect_running
from infra.postgres import postgres_running
from infra.clock import now_ms
from infra.processes import Proc, gateway_args, legacy_args, shop_args, sim_args, sinks_args, spawn, wait_http_ok, worker_args
from infra.settings import Settings
from legacy.db import apply_schema

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(settings: Settings) -> int:
    """Run the whole pipeline on this machine and block until SIGINT/SIGTERM; stop all of it."""
    try:
        with kafka_running(settings), postgres_running(settings) as dsn:
            apply_schema(dsn)  # the queue table exists before the connector is registered
            with connect_running(settings, dsn):
                return _run(settings)
    finally:
        print("  stopped.", flush=True)


def _run(settings: Settings) -> int:
    """Worker, gateway and simulators until a signal; returns the exit code."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs: list[Proc] = []
    try:
        procs.append(spawn(sinks_args(), settings, "sinks"))  # the local SMTP, SMS and web push servers
        procs.append(spawn(worker_args(), settings, "worker"))
        procs.append(spawn(gateway_args(), settings, "gateway"))
        wait_http_ok(f"{settings.gateway_url}/healthz", procs)
        procs.append(spawn(sim_args(), settings, "sim"))
        order, customer = f"demo-{now_ms():x}", "sim-customer-demo"  # the shop places this order first
        procs.append(spawn(shop_args(order, customer), settings, "shop"))
        if settings.sim_legacy_rate_hz > 0:  # the legacy platform's job, its queue rows bridged by Debezium
            procs.append(spawn(legacy_args("run", "--events", "10000000", "--rate", str(settings.sim_legacy_rate_hz),
                                           "--orders", "20", "--writers", "1", "--prefix", f"legacy-{now_ms():x}"),
                               settings, "legacy"))
        tokens = Tokens(settings)
        token = tokens.mint("ops", "demo", ttl_s=24 * 3600)
        print(f"\n  livetrack is running: open {settings.gateway_url}/#token={token}")
        print(f"  (an ops token for 24 h; logs in {settings.state_dir / 'logs'})")
        print(f"  notifications' mailbox, SMS and web push: http://127.0.0.1:{settings.notify_sinks_port}/")
        print(f"  a customer's tracking page: {settings.gateway_url}/track/{order}"
              f"#token={tokens.mint('customer', customer, ttl_s=24 * 3600)}")
        print(f"  {settings.sim_drivers} simulated drivers at {settings.sim_rate_hz} Hz; a shop with "
              f"{settings.sim_couriers} couriers, {settings.sim_order_rate_hz} orders/s; the legacy job, "
              f"{settings.sim_legacy_rate_hz} queue rows/s through Debezium. Ctrl-C stops everything.\n",
              flush=True)
        while not stop.wait(1.0):
            if dead := [p.name for p in procs if not p.alive()]:
                log.error("%s exited; stopping the demo (see %s)", ", ".join(dead), settings.state_dir / "logs")
                return 1
        return 0
    finally:
        for proc in reversed(procs):  # simulators, gateway, then worker (commits its offsets)
            proc.stop()
