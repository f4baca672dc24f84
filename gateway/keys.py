"""Typed keys for what the app holds."""
from __future__ import annotations

import socketio
from aiohttp import web

from gateway.batcher import IngestBatcher
from gateway.bridge import PushBridge
from gateway.channels import ChannelStore
from gateway.manager import LiveManager
from gateway.metrics import Metrics
from gateway.notifications import NotifyDesk
from gateway.orders import OrderDesk
from gateway.rides import RideDesk
from gateway.sockets import LiveNamespace
from infra.producer import AsyncProducer
from infra.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", ChannelStore)
PRODUCER = web.AppKey("producer", AsyncProducer)
BATCHER = web.AppKey("batcher", IngestBatcher)
BRIDGE = web.AppKey("bridge", PushBridge)
SIO = web.AppKey("sio", socketio.AsyncServer)
MANAGER = web.AppKey("manager", LiveManager)
LIVE = web.AppKey("live", LiveNamespace)
RIDES = web.AppKey("rides", RideDesk)
ORDERS = web.AppKey("orders", OrderDesk)
NOTIFY = web.AppKey("notify", NotifyDesk)
