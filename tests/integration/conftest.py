"""The running pipeline, shared by the integration tests of a session."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from infra.processes import raise_open_files_limit
from infra.settings import Settings
from infra.sinks import Sinks, ports_of, sinks_running
from tests.integration.fixtures import Pipeline


@pytest.fixture(scope="session", autouse=True)
def open_files() -> None:
    """The 1,000-client push test holds ~3,000 sockets in this process (clients and proxy ends)."""
    raise_open_files_limit()


@pytest.fixture(scope="session")
async def pipeline(kafka_settings: Settings) -> AsyncIterator[Pipeline]:
    p = Pipeline(kafka_settings)
    p.start_worker()
    await p.start_gateway()
    yield p
    p.stop()


@pytest.fixture(scope="session")
async def sinks(kafka_settings: Settings) -> AsyncIterator[Sinks]:
    """This session's SMTP servers (primary, secondary), SMS provider and web push service."""
    smtp, http = ports_of(kafka_settings)
    async with sinks_running(smtp, http) as s:
        yield s
