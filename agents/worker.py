"""Entry module for operators: `faust -A agents.worker worker -l info`, and livetrack's own commands
(`faust -A agents.worker replay|diff|shadows|drop|promote|lag|tables|tail|dlq`, agents.ops.commands).

This is a `main`: the one place the worker's settings are read from the environment.
"""
from __future__ import annotations

from agents.app import create_app
from agents.ops.commands import register_commands
from infra.settings import Settings

settings = Settings()
(settings.state_dir / "worker").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
app = create_app(settings)
register_commands(app, settings)
