"""Session fixtures: one real Kafka broker for the test session, started lazily, stopped at the end; the legacy
bridge's PostgreSQL and Kafka Connect worker likewise, for the tests that ask for them."""
from __future__ import annotations

import random
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from infra.broker import kafka_running
from infra.connect import LocalConnect, connect_running
from infra.postgres import postgres_running
from infra.settings import Settings
from legacy.db import apply_schema


def _free_port(pairs: bool = False) -> int:
    """A loopback port that is free (and, with pairs, so is the next one: broker + controller)."""
    for _ in range(200):
        port = random.randint(20_000, 32_000)  # below Linux's ephemeral range (32768+): no client socket takes it later
        ports = (port, port + 1) if pairs else (port,)
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings naming this session's own broker (or LIVETRACK_KAFKA_BOOTSTRAP's cluster), topics created."""
    state = Path(tmp_path_factory.mktemp("livetrack"))
    sinks_port = _free_port()
    settings = Settings(
        kafka_port=_free_port(pairs=True), state_dir=state, partitions=4,
        app_id=f"livetrack-test-{uuid.uuid4().hex[:8]}",
        gateway_port=_free_port(), worker_web_port=_free_port(),
        ingest_max_items=50, ingest_max_body_bytes=64 * 1024,
        # Dispatch on a test's time scale: offers live 2 s, a ride searches for 10 s at most.
        offer_ttl_ms=2_000, offer_grace_ms=300, reserve_timeout_ms=1_500, dispatch_retry_ms=500,
        dispatch_max_wait_ms=10_000, ride_reply_timeout_s=5.0, eta_push_threshold_s=5.0,
        # Notifications to this session's own local servers (tests.integration.conftest starts them), on a
        # test's time scale: the SMS escalation after 6 s, retries from 0.3 s.
        notify_smtp_servers=f"127.0.0.1:{_free_port()},127.0.0.1:{_free_port()}",
        notify_sms_base_urls=f"http://127.0.0.1:{sinks_port}", notify_sinks_port=sinks_port,
        notify_escalation_s=12.0, notify_retry_first_s=0.3, notify_retry_max_s=2.0, notify_provider_timeout_s=2.0,
    )
    with kafka_running(settings):
        yield settings


@pytest.fixture(scope="session")
def legacy_settings(kafka_settings: Settings) -> Settings:
    """kafka_settings plus this session's own PostgreSQL and Connect worker (free ports, own group)."""
    return kafka_settings.model_copy(update={
        "postgres_port": _free_port(), "connect_rest_port": _free_port(),
        "connect_group_id": f"{kafka_settings.app_id}-connect",
        # Reconnect to a restarted PostgreSQL within a second; commit source offsets every second.
        "connect_retry_wait_ms": 1000, "connect_offset_flush_ms": 1000,
    })


@pytest.fixture(scope="session")
def legacy_dsn(legacy_settings: Settings) -> Iterator[str]:
    """The session's PostgreSQL, with the legacy tables."""
    with postgres_running(legacy_settings) as dsn:
        apply_schema(dsn)
        yield dsn


@pytest.fixture(scope="session")
def connect_worker(legacy_settings: Settings, legacy_dsn: str) -> Iterator[LocalConnect]:
    """The session's Connect worker with the Debezium connector running (stopped at the end)."""
    with connect_running(legacy_settings, legacy_dsn) as worker:
        yield worker
