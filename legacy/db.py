"""The legacy database's schema (`legacy/schema.sql`), applied idempotently."""
from __future__ import annotations

from pathlib import Path

import psycopg

__all__ = ["SCHEMA_PATH", "LegacyError", "apply_schema"]

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
# Concurrent appliers (two `livetrack legacy init`, a test and the CLI) wait for each other on this
# advisory lock: CREATE ... IF NOT EXISTS alone races on the catalog.
SCHEMA_LOCK = 0x6C656761  # "lega"


class LegacyError(RuntimeError):
    """The legacy database or its jobs could not do what was asked."""


def apply_schema(dsn: str) -> None:
    """Create the legacy tables that are missing; safe to run again and again."""
    try:
        with psycopg.connect(dsn) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(SCHEMA_PATH.read_bytes())  # several statements: the simple query protocol
    except psycopg.Error as exc:
        raise LegacyError(f"applying {SCHEMA_PATH.name}: {exc}") from exc
