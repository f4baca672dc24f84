"""The Faust app factory: topics, tables and agents wired from one Settings."""
from __future__ import annotations

import logging

import socket
from dataclasses import dataclass
from typing import Any, Callable

import faust
from mode import Service

from agents import cells, demand, drivers, features, legacy_orders, notifications, offers, orders, rides, senders
from agents.activity import ActivityFanout
from agents.batching import register_batched
from agents.candidates import CellDriversView, ViewService
from agents.desk import DriverDesk
from agents.feed import Assignment, BatchFeed, group_id
from agents.features_math import FeaturePolicy
from agents.lookup import FeatureLookup
from agents.metrics import WorkerMetrics, serve_metrics
from agents.notify_flow import NotifyPolicy
from agents.order_flow import OrderPolicy
from agents.pings import DriverPolicy
from agents.reservations import OfferPolicy
from agents.runtime import AgentRuntime, DeadLetters, Faults
from agents.trips import DispatchPolicy
from infra.clock import InputClock, now_ms
from infra.faustcompat import read_uncommitted_from_start
from infra.notify.channels import channels_from
from infra.processes import set_switch_interval
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.shadow import PrefixedProducer
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.topics import (
    CELL_ACTIVITY, DISPATCH_DLQ, DRIVER_CELLS, FEATURES_DLQ, LEGACY_ORDER_EVENTS, LOCATIONS, LOCATIONS_DLQ,
    NOTIFICATION_DELIVERIES, NOTIFICATION_REQUESTS, NOTIFICATIONS_DLQ, OFFERS, ORDER_EVENTS, ORDERS_DLQ, RIDE_COMMANDS,
    RIDES, TopicSpec,
)
from tables.cell_to_activity import cell_to_activity
from tables.cell_to_drivers import cell_to_drivers
from tables.cell_to_features import cell_to_features
from tables.delivery_to_receipt import delivery_to_receipt
from tables.driver_to_outbox import driver_to_outbox
from tables.driver_to_state import driver_to_state
from tables.order_to_state import order_to_state
from tables.partition_to_watermark import partition_to_watermark
from tables.ride_to_state import ride_to_state
from tables.user_to_notifications import user_to_notifications
from tables.table import Table
from tables.transaction import TOGETHER, Transaction, commit

__all__ = ["Components", "ProducerService", "bind_topic", "create_app", "notify_policy", "now_ms"]
log = logging.getLogger(__name__)


def bind_topic(app: faust.App, spec: TopicSpec, settings: Settings) -> faust.TopicT:
    """A Faust topic for a declaration; values stay bytes so agents decode and dead-letter themselves."""
    return app.topic(
        settings.topic_prefix + spec.name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=spec.partition_count(settings.partitions), replicas=settings.replication_factor,
    )


@dataclass(frozen=True)
class Components:
    """What create_app built, for tests and benchmarks to reach (`app.livetrack`)."""

    producer: AsyncProducer
    runtime: AgentRuntime
    desk: DriverDesk
    assignment: Assignment
    drivers: drivers.DriversAgent
    offers: offers.OffersAgent
    rides: rides.RidesAgent
    cells: cells.CellsAgent
    demand: demand.DemandAgent
    features: features.FeaturesAgent
    orders: orders.OrdersAgent
    legacy_orders: legacy_orders.LegacyOrdersAgent
    notifications: notifications.NotificationsAgent
    senders: senders.SendersAgent
    view: CellDriversView
    feature_lookup: FeatureLookup  # surge and travel speed per cell, for dispatch
    metrics: WorkerMetrics
    tables: dict[str, Table[Any]]


class ProducerService(Service):
    """Starts the agents' producer with the worker, flushes it on the way out."""

    def __init__(self, producer: AsyncProducer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.producer = producer

    async def on_start(self) -> None:
        await self.producer.start()

    async def on_stop(self) -> None:
        await self.producer.close()


def _faust_app(settings: Settings, store: str) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store=store,
        # Per app id: RocksDB state belongs to one consumer group's changelogs.
        datadir=str((settings.state_dir / "worker" / settings.app_id).resolve()),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        consumer_auto_offset_reset="earliest",
        # Static membership: a restarted worker (same host and port) takes its partitions
        # back at once instead of waiting out the dead member's session.
        consumer_group_instance_id=settings.worker_instance_id or f"{socket.gethostname()}-{settings.worker_web_port}",
        broker_session_timeout=settings.worker_session_timeout_s,
        producer_acks=-1,
        table_standby_replicas=0 if settings.replication_factor == 1 else 1,
    )


def _producer(settings: Settings, clock: InputClock | None) -> AsyncProducer:
    """The agents' producer; a shadow's (topic_prefix set) sends every declared topic under its prefix,
    stamped with its input's time."""
    if settings.topic_prefix:
        return PrefixedProducer(settings.bootstrap, settings.topic_prefix, stamp=clock)
    return AsyncProducer(settings.bootstrap)


def notify_policy(settings: Settings) -> NotifyPolicy:
    caps = {c: int(n) for c, _, n in (part.strip().partition(":") for part in settings.notify_caps.split(",") if part)}
    return NotifyPolicy(escalation_ms=int(settings.notify_escalation_s * 1000),
                        dedupe_window_ms=settings.notify_dedupe_window_s * 1000,
                        inbox_max=settings.notify_inbox_max, caps=caps)


def create_app(settings: Settings, *, store: str = "rocksdb://", clock_ms: Callable[[], int] = now_ms,
               producer: AsyncProducer | None = None) -> faust.App:
    """Build the worker app. Tests pass `store="memory://"` and a producer of their own."""
    app = _faust_app(settings, store)
    app.on_worker_init.connect(lambda *_, **__: set_switch_interval(settings))
    # A shadow (a replay) decides at its input's time: see infra.clock.InputClock.
    input_clock = InputClock() if settings.topic_prefix and clock_ms is now_ms else None
    clock_ms = input_clock or clock_ms
    producer = producer if producer is not None else _producer(settings, input_clock)
    app.add_dependency(ProducerService(producer))  # started before agents, stopped after
    metrics = WorkerMetrics()
    runtime = AgentRuntime(producer, metrics, clock_ms, faults=Faults(settings.fault_at), input_clock=input_clock)
    serve_metrics(app, metrics, runtime)
    partitions = settings.partitions
    if len({spec.partition_count(partitions) for spec in (LOCATIONS, RIDE_COMMANDS, OFFERS, DRIVER_CELLS)}) != 1:
        raise ValueError("locations, ride-commands, offers and driver-cells must have as many partitions "
                         "(agents.feed reads the first three where Faust assigned this worker driver-cells)")

    cache_max = settings.table_cache_max
    policy = FeaturePolicy.from_settings(settings)
    activity_partitions = CELL_ACTIVITY.partition_count(partitions)
    states = Table(driver_to_state(app, partitions), typed_codec(records.DriverState, typed.DriverState),
                   cache_max=cache_max)
    outboxes = Table(driver_to_outbox(app, partitions), typed_codec(records.DriverOutbox, typed.DriverOutbox),
                     cache_max=cache_max)
    cell_drivers = Table(cell_to_drivers(app, partitions), typed_codec(records.CellDrivers, typed.CellDrivers),
                         cache_max=cache_max)
    ride_states = Table(ride_to_state(app, partitions), typed_codec(records.Ride, typed.Ride), cache_max=cache_max)
    panes = Table(cell_to_activity(app, activity_partitions, pane_ms=policy.pane_ms,
                                   reach_ms=policy.max_window_ms + policy.grace_ms),
                  typed_codec(records.CellPane, typed.CellPane), cache_max=cache_max)
    watermarks = Table(partition_to_watermark(app, activity_partitions),
                       typed_codec(records.Watermark, typed.Watermark), cache_max=cache_max)
    latest = Table(cell_to_features(app, activity_partitions), typed_codec(records.CellLatest, typed.CellLatest),
                   cache_max=cache_max)
    order_states = Table(order_to_state(app, ORDER_EVENTS.partition_count(partitions)),
                         typed_codec(records.Order, typed.Order), cache_max=cache_max)
    users = Table(user_to_notifications(app, NOTIFICATION_REQUESTS.partition_count(partitions)),
                  typed_codec(records.NotificationUser, typed.NotificationUser), cache_max=cache_max)
    ledger = Table(delivery_to_receipt(app, NOTIFICATION_DELIVERIES.partition_count(partitions)),
                   typed_codec(records.Receipt, typed.Receipt), cache_max=cache_max)
    tables: dict[str, Table[Any]] = {t.name: t for t in (
        states, outboxes, cell_drivers, ride_states, panes, watermarks, latest, order_states, users, ledger)}

    def fanout() -> ActivityFanout:
        return ActivityFanout(partitions=activity_partitions, resolution=policy.resolution, k=policy.k,
                              pane_ms=policy.pane_ms)

    assignment = Assignment()  # the feed's partitions: the drivers whose commands are decided in place
    desk = DriverDesk(
        states=states, outboxes=outboxes,
        pings=DriverPolicy.from_settings(settings), offers=OfferPolicy.from_settings(settings),
        partitions=LOCATIONS.partition_count(partitions), cell_partitions=DRIVER_CELLS.partition_count(partitions),
        owned=assignment, clock_ms=clock_ms,
    )
    lookup = FeatureLookup(latest, policy, clock_ms)
    view = CellDriversView()
    app.add_dependency(ViewService(view, settings, cell_drivers.changelog))
    dispatch_dlq = DeadLetters(DISPATCH_DLQ.name, clock_ms)
    orders_dlq = DeadLetters(ORDERS_DLQ.name, clock_ms)
    features_dlq = DeadLetters(FEATURES_DLQ.name, clock_ms)
    components = Components(
        producer=producer, runtime=runtime, desk=desk, assignment=assignment,
        drivers=drivers.DriversAgent(desk=desk, dead_letters=DeadLetters(LOCATIONS_DLQ.name, clock_ms),
                                     activity=fanout()),
        offers=offers.OffersAgent(desk=desk, dead_letters=dispatch_dlq),
        rides=rides.RidesAgent(
            rides=ride_states, desk=desk, dead_letters=dispatch_dlq, view=view,
            # Fares use the pickup cell's surge; ETAs each cell's travel speed (features).
            policy=DispatchPolicy.from_settings(settings, surge=lookup.surge, speed=lookup.travel_speed_mps),
            candidate_max_age_ms=settings.dispatch_candidate_max_age_ms, clock_ms=clock_ms,
        ),
        cells=cells.CellsAgent(cells=cell_drivers, dead_letters=DeadLetters(LOCATIONS_DLQ.name, clock_ms),
                               ttl_ms=settings.membership_ttl_ms),
        demand=demand.DemandAgent(fanout=fanout(), dead_letters=features_dlq, resolution=policy.resolution),
        features=features.FeaturesAgent(
            panes=panes, watermarks=watermarks, latest=latest, dead_letters=features_dlq, policy=policy,
            partitions=activity_partitions, metrics=metrics, clock_ms=clock_ms,
        ),
        orders=orders.OrdersAgent(
            orders=order_states, dead_letters=orders_dlq, clock_ms=clock_ms,
            policy=OrderPolicy.from_settings(settings, speed=lookup.travel_speed_mps),
        ),
        legacy_orders=legacy_orders.LegacyOrdersAgent(dead_letters=orders_dlq),
        notifications=notifications.NotificationsAgent(
            users=users, dead_letters=DeadLetters(NOTIFICATIONS_DLQ.name, clock_ms), policy=notify_policy(settings),
            clock_ms=clock_ms),
        senders=senders.SendersAgent(ledger=ledger, channels=channels_from(settings), clock_ms=clock_ms,
                                     dead_letters=DeadLetters(NOTIFICATIONS_DLQ.name, clock_ms),
                                     concurrency=settings.notify_send_concurrency),
        view=view, feature_lookup=lookup, metrics=metrics, tables=tables,
    )
    app.livetrack = components  # type: ignore[attr-defined]

    async def forget_cached(*_: object, **__: object) -> None:
        # Partitions moved: cached values may belong to another worker now, or be rewritten by recovery.
        for t in tables.values():
            t.forget()
        components.features.forget()

    app.on_partitions_revoked.connect(forget_cached)
    app.on_partitions_assigned.connect(forget_cached)

    async def from_start(*_: object, **__: object) -> None:
        fresh = await read_uncommitted_from_start(app)
        by_topic: dict[str, list[int]] = {}
        for tp in sorted(fresh):
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        if by_topic:
            log.info("no committed offset, read from the start: %s", "; ".join(f"{t} {p}" for t, p in by_topic.items()))

    app.on_rebalance_complete.connect(from_start)

    async def resend(taken: set[int]) -> None:
        """Partitions taken over: the desk's recent decisions go out before any later push."""
        tx = Transaction(TOGETHER, "desk-resend")
        desk.resend(tx, taken)
        await commit(tx, producer)

    batch_max, within_s = settings.worker_batch_max, settings.worker_batch_within_s
    register_batched(app, bind_topic(app, DRIVER_CELLS, settings), components.cells, runtime,
                     name="track_cell_drivers", batch_max=batch_max, batch_within_s=within_s)
    rides.register(app, components.rides, producer, tick_s=settings.dispatch_tick_ms / 1000)
    # The pings and dispatch are read in whole batches, outside Faust's per-record path (agents.feed).
    prefix = settings.topic_prefix
    app.add_dependency(BatchFeed(
        app, settings.bootstrap, group_id(settings.app_id),
        {prefix + LOCATIONS.name: components.drivers, prefix + RIDE_COMMANDS.name: components.rides,
         prefix + OFFERS.name: components.offers},
        runtime=runtime, follow=prefix + DRIVER_CELLS.name, batch_max=settings.worker_batch_max, assignment=assignment,
        on_taken=resend,
    ))
    register_batched(app, bind_topic(app, RIDES, settings), components.demand, runtime,
                     name="count_ride_requests", batch_max=batch_max, batch_within_s=within_s)
    register_batched(app, bind_topic(app, CELL_ACTIVITY, settings), components.features, runtime,
                     name="compute_cell_features", batch_max=batch_max, batch_within_s=within_s)
    register_batched(app, bind_topic(app, ORDER_EVENTS, settings), components.orders, runtime,
                     name="track_orders", batch_max=batch_max, batch_within_s=within_s)
    register_batched(app, bind_topic(app, LEGACY_ORDER_EVENTS, settings), components.legacy_orders, runtime,
                     name="bridge_legacy_orders", batch_max=batch_max, batch_within_s=within_s)
    register_batched(app, bind_topic(app, NOTIFICATION_REQUESTS, settings), components.notifications, runtime,
                     name="notify_users", batch_max=batch_max, batch_within_s=within_s)
    notifications.register(app, components.notifications, producer, tick_s=settings.notify_tick_ms / 1000)
    if not settings.topic_prefix:  # a shadow (a replay) decides deliveries but never sends them to people
        register_batched(app, bind_topic(app, NOTIFICATION_DELIVERIES, settings), components.senders, runtime,
                         name="send_notifications", batch_max=batch_max, batch_within_s=within_s)
    return app
