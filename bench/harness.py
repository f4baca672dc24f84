"""What the benchmarks share: their own settings (broker port, state dir), percentiles, output."""
from __future__ import annotations

import json
import time
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from hdrh.histogram import HdrHistogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from infra.broker import kafka_running
from infra.processes import WORKER_READY, Proc, gateway_args, spawn, wait_http_ok, worker_args
from infra.settings import Settings

__all__ = ["bench_settings", "percentiles", "emit", "wait_until", "pipeline_running", "scrape"]


def bench_settings(**overrides: Any) -> Settings:
    """Settings for a benchmark: its own broker port and state dir, so a running demo is untouched."""
    base = Settings()
    values = {
        "kafka_port": base.kafka_port + 100, "state_dir": base.state_dir / "bench",
        "gateway_port": base.gateway_port + 100, "worker_web_port": base.worker_web_port + 100,
        **overrides,
    }
    return base.model_copy(update=values)


def scrape(url: str) -> list[Metric]:
    """The metric families a Prometheus endpoint (gateway or worker `/metrics`, loopback) serves now."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(text_string_to_metric_families(resp.read().decode()))


def percentiles(values_ms: Sequence[float], prefix: str) -> dict[str, float]:
    """p50/p95/p99 (ms) of latencies, via HdrHistogram at microsecond resolution."""
    if not values_ms:
        return {f"{prefix}_p50_ms": float("nan"), f"{prefix}_p95_ms": float("nan"), f"{prefix}_p99_ms": float("nan")}
    h = HdrHistogram(1, 3_600_000_000, 3)
    for v in values_ms:
        h.record_value(max(1, int(v * 1000)))
    return {f"{prefix}_p{q}_ms": round(h.get_value_at_percentile(q) / 1000, 2) for q in (50, 95, 99)}


def emit(figures: dict[str, Any]) -> None:
    """Print the figures: readable lines, then the JSON object as the last line."""
    for k, v in figures.items():
        print(f"{k:32} {v}")
    print(json.dumps(figures), flush=True)


def wait_until(predicate: Any, timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


@contextmanager
def pipeline_running(settings: Settings, name: str) -> Iterator[tuple[Proc, Proc]]:
    """A fresh broker, a worker and a gateway for one benchmark, all ready; stopped by PID after."""
    with kafka_running(settings, fresh=True):
        worker = spawn(worker_args(), settings, f"{name}-worker")
        gateway = spawn(gateway_args(), settings, f"{name}-gateway")
        try:
            worker.wait_for_output(WORKER_READY, 90)
            wait_http_ok(f"{settings.gateway_url}/healthz", [gateway], 90)
            yield worker, gateway
        finally:
            gateway.stop()
            worker.stop()
