"""The running pipeline, shared by the integration tests of a session."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from infra.settings import Settings
from tests.integration.fixtures import Pipeline


@pytest.fixture(scope="session")
async def pipeline(kafka_settings: Settings) -> AsyncIterator[Pipeline]:
    p = Pipeline(kafka_settings)
    p.start_worker()
    await p.start_gateway()
    yield p
    p.stop()
