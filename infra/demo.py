"""`livetrack demo`: broker, topics, worker, gateway and fleet simulator, until Ctrl-C."""
from __future__ import annotations

import logging
import signal
import threading
import time

from infra.broker import LocalBroker, wait_for_cluster
from infra.processes import Proc, gateway_args, http_ok, sim_args, spawn, worker_args
from infra.settings import Settings
from infra.topics import ensure_topics

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def _wait_healthy(settings: Settings, procs: list[Proc], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not http_ok(f"{settings.gateway_url}/healthz"):
        dead = [p.name for p in procs if not p.alive()]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(dead) or 'gateway'} did not come up; see {settings.state_dir / 'logs'}")
        time.sleep(0.3)


def run_demo(settings: Settings) -> int:
    """Run the whole pipeline on this machine and block until SIGINT/SIGTERM; stop all of it."""
    broker = LocalBroker(settings) if settings.embedded_kafka else None
    if broker is not None:
        broker.start()
    else:
        wait_for_cluster(settings.bootstrap)
    ensure_topics(settings)
    (settings.state_dir / "worker").mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs: list[Proc] = []
    try:
        procs.append(spawn(worker_args(), settings, "worker"))
        procs.append(spawn(gateway_args(), settings, "gateway"))
        _wait_healthy(settings, procs)
        procs.append(spawn(sim_args(), settings, "sim"))
        print(f"\n  livetrack is running: open {settings.gateway_url}/  (logs in {settings.state_dir / 'logs'})")
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
        if broker is not None:
            broker.stop()
        print("  stopped.", flush=True)
