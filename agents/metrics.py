"""Prometheus metrics of the worker (its web server serves them at /metrics)."""
from __future__ import annotations

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
        self.watermark = Gauge(
            "livetrack_features_watermark_ms", "Event time (max seen) per cell-activity partition",
            ["partition"], registry=r,
        )


def serve_metrics(app: faust.App, metrics: WorkerMetrics) -> None:
    """GET /metrics on the worker's web server (Prometheus text format)."""

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # The type carries a charset, which aiohttp accepts only as a header.
        return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
