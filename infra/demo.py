"""`livetrack demo`: broker, topics, worker, gateway and fleet simulator, until Ctrl-C."""
from __future__ import annotations

import logging
import signal
import threading

from gateway.auth import Tokens
from infra.broker import kafka_running
from infra.processes import Proc, gateway_args, sim_args, sinks_args, spawn, wait_http_ok, worker_args
from infra.settings import Settings

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(settings: Settings) -> int:
    """Run the whole pipeline on this machine and block until SIGINT/SIGTERM; stop all of it."""
    try:
        with kafka_running(settings):
            return _run(settings)
    finally:
        print("  stopped.", flush=True)


def _run(settings: Settings) -> int:
    """Worker, gateway and simulator until a signal; returns the exit code."""
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
        token = Tokens(settings).mint("ops", "demo", ttl_s=24 * 3600)
        print(f"\n  livetrack is running: open {settings.gateway_url}/#token={token}")
        print(f"  (an ops token for 24 h; logs in {settings.state_dir / 'logs'})")
        print(f"  notifications' mailbox, SMS and web push: http://127.0.0.1:{settings.notify_sinks_port}/")
        print(f"  {settings.sim_drivers} simulated drivers at {settings.sim_rate_hz} Hz. Ctrl-C stops everything.\n",
              flush=True)
        while not stop.wait(1.0):
            if dead := [p.name for p in procs if not p.alive()]:
                log.error("%s exited; stopping the demo (see %s)", ", ".join(dead), settings.state_dir / "logs")
                return 1
        return 0
    finally:
        for proc in reversed(procs):  # simulator, gateway, then worker (commits its offsets)
            proc.stop()
