"""Agent tests run over both table stores Faust offers: memory and RocksDB."""
from __future__ import annotations

import pytest


@pytest.fixture(params=["memory://", "rocksdb://"], ids=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)
