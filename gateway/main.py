"""The gateway app factory and its runner."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

import socketio
from aiohttp import web

from gateway.auth import Tokens, auth_middleware
from gateway.batcher import IngestBatcher
from gateway.bridge import PushBridge
from gateway.channels import ChannelStore
from gateway.keys import BATCHER, BRIDGE, LIVE, MANAGER, METRICS, NOTIFY, ORDERS, PRODUCER, RIDES, SETTINGS, SIO, STORE
from gateway.manager import LiveManager
from gateway.metrics import Metrics
from gateway.limits import LiveLimits
from gateway.middlewares import error_middleware, rate_limit_middleware
from gateway.notifications import NotifyDesk
from gateway.orders import OrderDesk, OrderView
from gateway.rides import RideDesk, RideView
from gateway.routes import setup_routes
from gateway.sockets import LiveNamespace
from infra.processes import raise_open_files_limit, set_switch_interval
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.topics import partition_count
from schemas.topics import LOCATIONS

__all__ = ["create_app", "run", "setup_live"]

log = logging.getLogger(__name__)


async def _kafka_ctx(app: web.Application) -> AsyncIterator[None]:
    """Producer, ingest batcher and push bridge live exactly as long as the app."""
    settings = app[SETTINGS]
    app[PRODUCER] = producer = AsyncProducer(settings.bootstrap)
    await producer.start()
    partitions = await asyncio.get_running_loop().run_in_executor(None, partition_count, settings, LOCATIONS)
    app[BATCHER] = batcher = IngestBatcher(
        producer, LOCATIONS.name, partitions,
        linger_s=settings.ingest_linger_ms / 1000, max_events=settings.ingest_batch_max,
    )
    live = app[LIVE]
    # The replay window is the resume history: a restarted gateway resumes clients as before.
    app[BRIDGE] = bridge = PushBridge(settings, live.publish, app[METRICS], replay_ms=settings.push_history_age_ms)
    live.ready = bridge.ready  # subscribes are answered once the history window is replayed
    await bridge.start()
    await app[RIDES].start(producer)
    await app[ORDERS].start(producer)
    await app[NOTIFY].start(producer)
    ticker = asyncio.create_task(live.run_ticker(settings.push_tick_ms / 1000), name="live-ticker")
    yield
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    await app[ORDERS].stop()
    await app[RIDES].stop()
    await bridge.stop()
    await batcher.close()
    await producer.close()


def _no_ride(ride_id: str) -> str | None:
    return None


def _no_state(channel: str) -> dict[str, Any] | None:
    return None


def setup_live(app: web.Application, tokens: Tokens, rides: RideDesk | None = None,
               orders: OrderDesk | None = None, notify: NotifyDesk | None = None) -> LiveNamespace:
    """Socket.IO on the app: the server, its client manager (the fan-out) and the /live namespace.

    Needs SETTINGS, METRICS and STORE in the app; the namespace's `ready` is set by the push bridge."""
    settings, metrics = app[SETTINGS], app[METRICS]
    manager = LiveManager(metrics, backlog=settings.push_send_backlog, pending_max=settings.push_pending_max,
                          retry_ms=settings.push_retry_ms)
    origins = [o for o in settings.cors_origins.split(",") if o]
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, cors_allowed_origins=origins or None,
                               max_http_buffer_size=64 * 1024)
    live = LiveNamespace(app[STORE], manager, metrics, tokens, ack_priority=settings.push_ack_priority,
                         h3_resolution=settings.h3_resolution,
                         ride_rider=rides.view.rider_of if rides else _no_ride,
                         decide=rides.decide if rides else None,
                         order_customer=orders.view.customer_of if orders else _no_ride,
                         state_of=orders.view.state_of if orders else _no_state,
                         set_status=rides.set_status if rides else None,
                         user_acked=notify.acked if notify else None, limits=LiveLimits.from_settings(settings))
    sio.register_namespace(live)
    sio.attach(app)
    app[SIO], app[MANAGER], app[LIVE] = sio, manager, live
    return live


def create_app(settings: Settings) -> web.Application:
    """A gateway bound to `settings`: routes, Socket.IO /live, Kafka producer and bridge."""
    tokens = Tokens(settings)
    # error_middleware outermost: an Unauthorized raised by auth becomes its 401; the rate limit
    # counts authenticated callers only.
    app = web.Application(client_max_size=settings.ingest_max_body_bytes,
                          middlewares=[error_middleware, auth_middleware(tokens),
                                       rate_limit_middleware(settings.api_rate_per_s)])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[STORE] = ChannelStore(max_len=settings.push_history_max, max_age_ms=settings.push_history_age_ms)
    app[RIDES] = rides = RideDesk(settings, RideView())
    app[ORDERS] = orders = OrderDesk(settings, OrderView(keep_final_ms=settings.order_view_replay_ms))
    app[NOTIFY] = notify = NotifyDesk(settings, app[STORE])
    setup_live(app, tokens, rides, orders, notify)
    setup_routes(app)
    app.cleanup_ctx.append(_kafka_ctx)
    return app


def run(settings: Settings) -> None:
    files = raise_open_files_limit()  # one per /live connection
    set_switch_interval(settings)
    log.info("gateway on %s (up to %d open files)", settings.gateway_url, files)
    web.run_app(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                print=None, access_log=None)
