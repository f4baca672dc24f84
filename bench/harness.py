"""What the benchmarks share: their own settings (broker port, state dir), percentiles, output."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import psutil
from hdrh.histogram import HdrHistogram
from prometheus_client.metrics_core import Metric

from infra.broker import LocalBroker, kafka_running
from infra.processes import WORKER_READY, Proc, gateway_args, scrape, spawn, wait_http_ok, worker_args
from infra.settings import Settings

__all__ = [
    "CpuMeter", "bench_settings", "bucket_quantile", "counter_total", "cpu_s", "emit", "histogram_buckets",
    "percentiles", "pipeline_running", "scrape", "wait_until",
]


def bench_settings(**overrides: Any) -> Settings:
    """Settings for a benchmark: its own broker port and state dir, so a running demo is untouched."""
    base = Settings()
    values = {
        "kafka_port": base.kafka_port + 100, "state_dir": base.state_dir / "bench",
        "gateway_port": base.gateway_port + 100, "worker_web_port": base.worker_web_port + 100,
        "postgres_port": base.postgres_port + 100, "connect_rest_port": base.connect_rest_port + 100,
        **overrides,
    }
    return base.model_copy(update=values)


def cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds `process` has used so far."""
    t = process.cpu_times()
    return t.user + t.system


class CpuMeter:
    """CPU of the pipeline's processes (and the machine) between `start()` and `stop()`, in % of a core."""

    def __init__(self, settings: Settings, worker: Proc, gateway: Proc, *, loadgen: bool = False) -> None:
        self.procs = {"worker": worker.ps, "gateway": gateway.ps}
        broker_pid = LocalBroker(settings).pid() if settings.embedded_kafka else None
        if broker_pid is not None:
            self.procs["broker"] = psutil.Process(broker_pid)
        if loadgen:  # the benchmark's own clients share the machine
            self.procs["loadgen"] = psutil.Process()
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}

    def start(self) -> None:
        psutil.cpu_percent()
        self._cpu0, self._t0 = {n: cpu_s(p) for n, p in self.procs.items()}, time.perf_counter()

    def stop(self) -> dict[str, float]:
        """`<name>_cpu_pct` per process and `machine_cpu_pct` (of all cores: 200 is two cores busy)."""
        elapsed = time.perf_counter() - self._t0
        figures = {f"{n}_cpu_pct": round((cpu_s(p) - self._cpu0[n]) / elapsed * 100, 1) for n, p in self.procs.items()}
        figures["machine_cpu_pct"] = round(psutil.cpu_percent() * psutil.cpu_count(), 1)
        return figures


def counter_total(families: list[Metric], name: str, **labels: str) -> float:
    """A counter of one scrape, summed over the series matching `labels`."""
    return sum(s.value for f in families if f.name == name for s in f.samples
               if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def histogram_buckets(families: list[Metric], name: str) -> dict[float, float]:
    """A histogram of one scrape as {upper bound (s): cumulative count}."""
    return {float(s.labels["le"]): s.value for f in families if f.name == name
            for s in f.samples if s.name == f"{name}_bucket"}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile (ms) of what a histogram observed between two scrapes, interpolated within its bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return round(lower * 1000, 1)  # past the last bound: its lower edge is all that is known
            return round((lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)) * 1000, 1)
        lower, below = bound, count
    return float("nan")


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
