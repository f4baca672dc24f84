"""A shadow: the live worker's code under its own app id and topic prefix, fed a replayed range.

Its manifest (`<state_dir>/shadows/<name>.json`) says what it is (app id, prefix, the live app id it
shadows, the settings it overrides) and how far its replay got, so a killed replay resumes and the
diff, drop and promote commands find it.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agents.ops.errors import OpsError
from infra.settings import Settings

__all__ = ["Shadow", "live_settings_for", "load", "parse_overrides", "saved", "shadow_settings", "shadows"]

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# What a shadow is, not a policy: never overridden.
FIXED = frozenset({"app_id", "topic_prefix", "kafka_bootstrap", "kafka_port", "state_dir", "partitions"})


@dataclass
class Shadow:
    """What a replay made: names, overrides, the range (topic -> partition -> [start, stop)), progress."""

    name: str
    app_id: str
    prefix: str
    live_app_id: str
    overrides: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    copied: int = 0
    status: str = "new"  # new, replaying, done
    created_ms: int = 0
    finished_ms: int = 0
    worker_pid: int = 0
    # Kept for a resumed replay: Faust's assignor refuses a static member whose web URL changed.
    web_port: int = 0


def _dir(settings: Settings) -> Path:
    return settings.state_dir / "shadows"


def _path(settings: Settings, name: str) -> Path:
    return _dir(settings) / f"{name}.json"


def saved(settings: Settings, shadow: Shadow) -> Shadow:
    """Write the manifest (atomically: a killed replay leaves the previous one)."""
    _dir(settings).mkdir(parents=True, exist_ok=True)
    tmp = _path(settings, shadow.name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(shadow), indent=2) + "\n")
    tmp.replace(_path(settings, shadow.name))
    return shadow


def load(settings: Settings, name: str) -> Shadow:
    try:
        return Shadow(**json.loads(_path(settings, name).read_text()))
    except FileNotFoundError:
        raise OpsError(f"no shadow {name!r} (see `shadows`)") from None


def shadows(settings: Settings) -> list[Shadow]:
    return [load(settings, p.stem) for p in sorted(_dir(settings).glob("*.json"))]


def new_shadow(settings: Settings, name: str, overrides: Mapping[str, Any]) -> Shadow:
    """A shadow of the live app of `settings` named `name` (lowercase letters, digits, dashes)."""
    if not NAME.fullmatch(name):
        raise OpsError(f"shadow name {name!r}: 1-32 of a-z 0-9 - (starting with a letter or digit)")
    return Shadow(name=name, app_id=f"{settings.app_id}-shadow-{name}", prefix=f"shadow-{name}.",
                  live_app_id=settings.app_id, overrides=dict(overrides), created_ms=int(time.time() * 1000))


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`name=value` pairs (setting names without LIVETRACK_, any case) as given on the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        key = name.strip().lower().removeprefix("livetrack_")
        if not sep or key not in Settings.model_fields:
            raise OpsError(f"--set {pair!r}: expected SETTING=VALUE with a livetrack setting name")
        if key in FIXED:
            raise OpsError(f"--set {key}: a shadow's {key} is its own, not a policy")
        out[key] = value
    return out


def shadow_settings(settings: Settings, shadow: Shadow, **extra: Any) -> Settings:
    """The live settings with the shadow's names and overrides (validated like the environment)."""
    values = {**settings.model_dump(), **shadow.overrides, "app_id": shadow.app_id, "topic_prefix": shadow.prefix,
              **extra}
    try:
        return Settings(**values)
    except ValueError as exc:
        raise OpsError(f"shadow {shadow.name}: {exc}") from exc


def live_settings_for(settings: Settings, side: str) -> tuple[str, str]:
    """(app id, topic prefix) of a diff side: `live` or a shadow's name."""
    if side == "live":
        return settings.app_id, settings.topic_prefix
    shadow = load(settings, side)
    return shadow.app_id, shadow.prefix
