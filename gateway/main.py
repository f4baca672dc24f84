"""The gateway app factory and its runner."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import socketio
from aiohttp import web

from gateway.auth import Tokens, auth_middleware
from gateway.batcher import IngestBatcher
from gateway.bridge import PushBridge
from gateway.channels import ChannelStore
from gateway.keys import BATCHER, BRIDGE, LIVE, METRICS, PRODUCER, RIDES, SETTINGS, SIO, STORE
from gateway.metrics import Metrics
from gateway.middlewares import error_middleware
from gateway.rides import RideDesk, RideView
from gateway.routes import setup_routes
from gateway.sockets import LiveNamespace
from infra.producer import AsyncProducer
from infra.settings import Settings
from infra.topics import partition_count
from schemas.topics import LOCATIONS

__all__ = ["create_app", "run"]

log = logging.getLogger(__name__)
REPLAY_MS = 10 * 60 * 1000


async def _kafka_ctx(app: web.Application) -> AsyncIterator[None]:
    """Producer, ingest batcher and push bridge live exactly as long as the app."""
    settings = app[SETTINGS]
    app[PRODUCER] = producer = AsyncProducer(settings.bootstrap)
    producer.start()
    partitions = await asyncio.get_running_loop().run_in_executor(None, partition_count, settings, LOCATIONS)
    app[BATCHER] = batcher = IngestBatcher(
        producer, LOCATIONS.name, partitions,
        linger_s=settings.ingest_linger_ms / 1000, max_events=settings.ingest_batch_max,
    )
    app[BRIDGE] = bridge = PushBridge(settings, app[LIVE].publish, replay_ms=REPLAY_MS)
    await bridge.start()
    await app[RIDES].start(producer)
    yield
    await app[RIDES].stop()
    await bridge.stop()
    await batcher.close()
    await producer.close()


def create_app(settings: Settings) -> web.Application:
    """A gateway bound to `settings`: routes, Socket.IO /live, Kafka producer and bridge."""
    tokens = Tokens(settings)
    # error_middleware outermost: an Unauthorized raised by auth becomes its 401.
    app = web.Application(client_max_size=settings.ingest_max_body_bytes,
                          middlewares=[error_middleware, auth_middleware(tokens)])
    app[SETTINGS] = settings
    app[METRICS] = metrics = Metrics()
    app[STORE] = store = ChannelStore()
    origins = [o for o in settings.cors_origins.split(",") if o]
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=origins or None,
                               max_http_buffer_size=64 * 1024)
    app[SIO] = sio
    app[RIDES] = rides = RideDesk(settings, RideView())
    app[LIVE] = live = LiveNamespace(store, metrics, tokens, ride_rider=rides.view.rider_of, decide=rides.decide)
    sio.register_namespace(live)
    sio.attach(app)
    setup_routes(app)
    app.cleanup_ctx.append(_kafka_ctx)
    return app


def run(settings: Settings) -> None:
    log.info("gateway on %s", settings.gateway_url)
    web.run_app(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                print=None, access_log=None)
