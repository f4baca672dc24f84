"""The Faust app factory: topics, tables and agents wired from one Settings."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

import faust
from mode import Service

from agents import cells, demand, drivers, features, offers, rides
from agents.activity import ActivityFanout
from agents.batching import DeadLetters, partition_event
from agents.candidates import CellDriversView, ViewService
from agents.feed import Assignment, BatchFeed, group_id
from agents.features_math import FeaturePolicy
from agents.metrics import WorkerMetrics, serve_metrics
from infra.clock import now_ms
from infra.processes import set_switch_interval
from infra.producer import AsyncProducer
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.records import CellDrivers, CellLatest, CellPane, DriverState, Ride, Watermark
from schemas.topics import (
    CELL_ACTIVITY, DISPATCH_DLQ, DRIVER_CELLS, FEATURES_DLQ, LOCATIONS, LOCATIONS_DLQ, OFFERS, RIDE_COMMANDS, RIDES,
    TopicSpec,
)
from tables.cell_to_activity import cell_to_activity
from tables.cell_to_drivers import cell_to_drivers
from tables.cell_to_features import FeatureLookup, cell_to_features
from tables.driver_to_state import driver_to_state
from tables.ride_to_state import ride_to_state
from tables.partition_to_watermark import partition_to_watermark
from tables.writer import TableWriter

__all__ = ["Components", "create_app", "bind_topic", "now_ms", "ProducerService"]


def bind_topic(app: faust.App, spec: TopicSpec, settings: Settings) -> faust.TopicT:
    """A Faust topic for a declaration; values stay bytes so agents decode and dead-letter themselves."""
    return app.topic(
        spec.name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=spec.partition_count(settings.partitions), replicas=settings.replication_factor,
    )


@dataclass(frozen=True)
class Components:
    """What create_app built, for tests and benchmarks to reach (`app.livetrack`)."""

    producer: AsyncProducer
    dead_letters: DeadLetters
    states: TableWriter
    cells: TableWriter
    drivers: drivers.DriversAgent
    cell_agent: cells.CellsAgent
    rides: TableWriter
    view: CellDriversView
    ride_agent: rides.RidesAgent
    offer_agent: offers.OffersAgent
    demand: demand.DemandAgent
    features: features.FeaturesAgent
    feature_lookup: FeatureLookup  # surge and travel speed per cell, for dispatch
    metrics: WorkerMetrics


class ProducerService(Service):
    """Starts the agents' producer with the worker, flushes it on the way out."""

    def __init__(self, producer: AsyncProducer, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.producer = producer

    async def on_start(self) -> None:
        await self.producer.start()

    async def on_stop(self) -> None:
        await self.producer.close()


def create_app(settings: Settings, *, store: str = "rocksdb://", clock_ms: Callable[[], int] = now_ms) -> faust.App:
    """Build the worker app. Tests pass `store="memory://"`."""
    app = faust.App(
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
    app.on_worker_init.connect(lambda *_, **__: set_switch_interval(settings))
    producer = AsyncProducer(settings.bootstrap)
    app.add_dependency(ProducerService(producer))  # started before agents, stopped after
    dead_letters = DeadLetters(LOCATIONS_DLQ.name, producer, clock_ms)
    batch = {"batch_max": settings.worker_batch_max, "batch_within_s": settings.worker_batch_within_s}
    cache = {"cache_max": settings.table_cache_max}
    states = TableWriter(driver_to_state(app, settings.partitions), producer, codec_for(DriverState), **cache)
    cell_members = TableWriter(cell_to_drivers(app, settings.partitions), producer, codec_for(CellDrivers), **cache)
    policy = FeaturePolicy.from_settings(settings)
    activity_partitions = CELL_ACTIVITY.partition_count(settings.partitions)
    panes = TableWriter(cell_to_activity(app, activity_partitions, policy), producer, codec_for(CellPane), **cache)
    watermarks = TableWriter(partition_to_watermark(app, activity_partitions), producer, codec_for(Watermark),
                             **cache)
    latest_table = cell_to_features(app, activity_partitions)
    latest = TableWriter(latest_table, producer, codec_for(CellLatest), **cache)
    features_dlq = DeadLetters(FEATURES_DLQ.name, producer, clock_ms)
    metrics = WorkerMetrics()
    serve_metrics(app, metrics)

    def fanout() -> ActivityFanout:
        return ActivityFanout(producer, partitions=activity_partitions, resolution=policy.resolution, k=policy.k,
                              pane_ms=policy.pane_ms)

    feature_agent = features.FeaturesAgent(
        panes=panes, watermarks=watermarks, latest=latest, producer=producer, dead_letters=features_dlq,
        policy=policy, partitions=activity_partitions, metrics=metrics, clock_ms=clock_ms,
    )

    ride_states = TableWriter(ride_to_state(app, settings.partitions), producer, codec_for(Ride), **cache)
    view = CellDriversView()
    app.add_dependency(ViewService(view, settings, cell_members.changelog))
    dispatch_dlq = DeadLetters(DISPATCH_DLQ.name, producer, clock_ms)

    async def forget_cached(*_: object, **__: object) -> None:
        # Partitions moved: cached values may belong to another worker now, or be rewritten by recovery.
        states.forget()
        cell_members.forget()
        ride_states.forget()
        feature_agent.forget()
        offer_agent.forget()

    app.on_partitions_revoked.connect(forget_cached)
    app.on_partitions_assigned.connect(forget_cached)
    partitions = settings.partitions
    lookup = FeatureLookup(latest_table, codec_for(CellLatest), policy, clock_ms)
    assignment = Assignment()  # the feed's partitions: the drivers whose offers are decided in place
    offer_events = {p: partition_event(app, OFFERS.name, p) for p in range(OFFERS.partition_count(partitions))}
    offer_agent = offers.OffersAgent(
        states=states, producer=producer, dead_letters=dispatch_dlq,
        policy=offers.OfferPolicy.from_settings(settings), partitions=OFFERS.partition_count(partitions),
        cell_partitions=DRIVER_CELLS.partition_count(partitions), clock_ms=clock_ms,
        owned=assignment, event_for=offer_events.__getitem__,
    )
    components = Components(
        producer=producer, dead_letters=dead_letters, states=states, cells=cell_members,
        drivers=drivers.DriversAgent(
            states=states, producer=producer, dead_letters=dead_letters,
            policy=drivers.DriverPolicy.from_settings(settings), partitions=LOCATIONS.partition_count(partitions),
            cell_partitions=DRIVER_CELLS.partition_count(partitions), clock_ms=clock_ms, activity=fanout(),
            dispatching=offer_agent.is_unsent,
        ),
        cell_agent=cells.CellsAgent(cells=cell_members, producer=producer, dead_letters=dead_letters,
                                    ttl_ms=settings.membership_ttl_ms),
        rides=ride_states, view=view,
        ride_agent=rides.RidesAgent(
            rides=ride_states, producer=producer, dead_letters=dispatch_dlq, view=view,
            # Fares use the pickup cell's surge; ETAs each cell's travel speed (features).
            policy=rides.DispatchPolicy.from_settings(settings, surge=lookup.surge, speed=lookup.travel_speed_mps),
            candidate_max_age_ms=settings.dispatch_candidate_max_age_ms, clock_ms=clock_ms, offers=offer_agent,
        ),
        offer_agent=offer_agent,
        demand=demand.DemandAgent(fanout=fanout(), producer=producer, dead_letters=features_dlq,
                                  resolution=policy.resolution),
        features=feature_agent,
        feature_lookup=lookup,
        metrics=metrics,
    )
    app.livetrack = components  # type: ignore[attr-defined]
    cells.register(app, bind_topic(app, DRIVER_CELLS, settings), components.cell_agent, **batch)
    if len({spec.partition_count(partitions) for spec in (LOCATIONS, RIDE_COMMANDS, OFFERS, DRIVER_CELLS)}) != 1:
        raise ValueError("locations, ride-commands, offers and driver-cells must have as many partitions "
                         "(agents.feed reads the first three where Faust assigned this worker driver-cells)")
    rides.register(app, components.ride_agent, tick_s=settings.dispatch_tick_ms / 1000)
    # The pings and dispatch are read in whole batches, outside Faust's per-record path (agents.feed).
    app.add_dependency(BatchFeed(
        app, settings.bootstrap, group_id(settings.app_id),
        {LOCATIONS.name: components.drivers.process, RIDE_COMMANDS.name: components.ride_agent.process,
         OFFERS.name: components.offer_agent.process},
        follow=DRIVER_CELLS.name, batch_max=settings.worker_batch_max, assignment=assignment,
    ))
    demand.register(app, bind_topic(app, RIDES, settings), components.demand, **batch)
    features.register(app, bind_topic(app, CELL_ACTIVITY, settings), components.features, **batch)
    return app
