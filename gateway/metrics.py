"""Prometheus metrics of the gateway (served at /metrics)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """One registry per app, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter("livetrack_ingest_events", "Location events accepted into Kafka", registry=r)
        self.rejected = Counter("livetrack_ingest_rejected_requests", "Ingest requests refused", ["status"], registry=r)
        self.pushed = Counter("livetrack_push_messages", "Push messages received from Kafka", registry=r)
        self.emitted = Counter("livetrack_push_emits", "Update frames sent to /live connections", registry=r)
        self.direct = Counter("livetrack_push_direct_emits",
                              "Update frames written straight to a socket that keeps up (of the emits)", registry=r)
        # direct: the shared frame on the transport; queued: Engine.IO's queue (the socket was busy, slow,
        # polling, or the frame tells a skip); fallback: Engine.IO's queue because something gateway.direct
        # reaches below the libraries' APIs is missing (never, with the pinned versions).
        self.frames = Counter("livetrack_push_frames", "Update frames sent to /live connections, by path", ["path"],
                              registry=r)
        self.internals_missing = Gauge(
            "livetrack_push_internals_missing", "1 for each library internal gateway.direct found missing", ["name"],
            registry=r,
        )
        self.delivery_errors = Counter(
            "livetrack_push_delivery_errors", "Bugs caught in the fan-out, by where (the rest went on)", ["where"],
            registry=r,
        )
        self.expired = Counter("livetrack_push_expired", "Push messages whose TTL ended before delivery", registry=r)
        self.bad_pushes = Counter("livetrack_push_bad", "Push messages skipped: malformed (a field missing or mistyped, data not a JSON object)", registry=r)
        self.undecodable = Counter("livetrack_push_undecodable", "Records of `push` skipped: not a PushMessage",
                                   registry=r)
        self.retried = Counter("livetrack_push_retries", "Unacked events sent again", registry=r)
        self.slow_dropped = Counter("livetrack_push_slow_dropped", "Connections dropped for falling too far behind",
                                    registry=r)
        self.resumed = Counter("livetrack_push_resumes", "Subscriptions with since, by whether history covered the gap",
                               ["recovered"], registry=r)
        self.refused = Counter(
            "livetrack_live_refused", "/live connections and subscriptions refused", ["what"], registry=r
        )
        self.driver_reads = Counter("livetrack_driver_reads", "GET /v1/drivers/{id} requests answered", registry=r)
        self.order_reads = Counter("livetrack_order_reads", "GET /v1/orders/{id} answered, by status (200 or 304)",
                                   ["status"], registry=r)
        self.connected = Gauge("livetrack_sockets_connected", "Open /live connections", registry=r)
        self.event_to_emit = Histogram(
            "livetrack_event_to_emit_seconds", "Gateway receipt of the event -> emit of its update",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r,
        )
