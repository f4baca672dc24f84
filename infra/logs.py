"""Logging setup, called by entry points only (never at import)."""
from __future__ import annotations

import logging

__all__ = ["setup_logging"]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
