"""Entry module for operators: `faust -A agents.worker worker -l info`.

This is a `main`: the one place the worker's settings are read from the environment.
"""
from __future__ import annotations

from agents.app import create_app
from infra.settings import Settings

settings = Settings()
(settings.state_dir / "worker").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
app = create_app(settings)
