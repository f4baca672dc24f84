"""Prometheus metrics of the worker (its web server serves them at /metrics)."""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["WorkerMetrics", "serve_metrics"]


class WorkerMetrics:
    """One registry per app, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.feature_events = Counter(
            "livetrack_features_events", "Sightings and requests reaching the features agent, by outcome: "
            "on_time, out_of_order (late within grace, counted), duplicate (replay), late (after grace, "
            "not counted), future (clock ahead, not counted); copy: own cell or a neighbour's copy",
            ["kind", "outcome", "copy"], registry=r,
        )
        self.late_by = Histogram(
            "livetrack_features_late_by_seconds", "How far behind the watermark events after grace were",
            buckets=(1, 5, 15, 30, 60, 300, 900, 3600), registry=r,
        )
        self.windows_closed = Counter(
            "livetrack_features_windows", "Cell features emitted, by window and final/running",
            ["window", "final"], registry=r,
        )
        self.close_to_ack = Histogram(
            "livetrack_features_close_to_ack_seconds", "Window close -> its features acked by Kafka",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r,
        )
        self.commit_seconds = Histogram(
            "livetrack_commit_seconds", "An agent batch's commit: every phase produced, acked and stored",
            ["agent"], buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0), registry=r,
        )
        self.commit_retries = Counter(
            "livetrack_commit_retries", "Phases produced again after a transient broker error", ["agent"], registry=r,
        )
        self.dead_letters = Counter(
            "livetrack_dead_letters", "Records (or items of records) refused and dead-lettered", ["agent"], registry=r,
        )
        self.partition_stopped = Gauge(
            "livetrack_partition_stopped", "1 when a bug stopped the agent on this input partition",
            ["agent", "topic", "partition"], registry=r,
        )
        self.watermark = Gauge(
            "livetrack_features_watermark_ms", "Event time (max seen) per cell-activity partition",
            ["partition"], registry=r,
        )


class Health(Protocol):
    """What /healthz reports: the partitions a bug stopped."""

    @property
    def stopped(self) -> Mapping[tuple[str, int], Any]: ...


def serve_metrics(app: faust.App, metrics: WorkerMetrics, health: Health) -> None:
    """GET /metrics (Prometheus text format) and GET /healthz on the worker's web server."""

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # The type carries a charset, which aiohttp accepts only as a header.
        return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def health_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Ready unless a bug stopped a partition (then 503, naming each stopped partition and why)."""
        stopped = [{"agent": s.agent, "topic": s.topic, "partition": s.partition, "offset": s.offset,
                    "error": s.error} for s in health.stopped.values()]
        return self.json({"ready": not stopped, "stopped": stopped}, status=503 if stopped else 200)
