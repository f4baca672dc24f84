"""infra.settings.Settings: one frozen object, every knob tied to one LIVETRACK_* variable."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.processes import set_switch_interval
from infra.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No LIVETRACK_* variable from the outer environment leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("LIVETRACK_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_run_the_embedded_broker() -> None:
    s = Settings()
    assert s.kafka_bootstrap == ""
    assert s.embedded_kafka is True
    assert s.bootstrap == "127.0.0.1:19092"


def test_embedded_bootstrap_follows_kafka_port(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LIVETRACK_KAFKA_PORT", "23456")
    s = Settings()
    assert s.kafka_port == 23456
    assert (s.embedded_kafka, s.bootstrap) == (True, "127.0.0.1:23456")


def test_external_cluster(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LIVETRACK_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    clean_env.setenv("LIVETRACK_KAFKA_PORT", "23456")
    s = Settings()
    assert (s.embedded_kafka, s.bootstrap) == (False, "kafka-1:9092,kafka-2:9092")


def test_env_values_are_typed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LIVETRACK_PARTITIONS", "16")
    clean_env.setenv("LIVETRACK_INGEST_LINGER_MS", "0.5")
    clean_env.setenv("LIVETRACK_STATE_DIR", "/tmp/lt-state")
    clean_env.setenv("LIVETRACK_APP_ID", "livetrack-eu")
    clean_env.setenv("LIVETRACK_H3_RESOLUTION", "8")
    s = Settings()
    assert (s.partitions, s.ingest_linger_ms, s.state_dir, s.app_id, s.h3_resolution) == (
        16, 0.5, Path("/tmp/lt-state"), "livetrack-eu", 8)


def test_only_prefixed_variables_count(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PARTITIONS", "3")
    clean_env.setenv("KAFKA_BOOTSTRAP", "elsewhere:9092")
    s = Settings()
    assert (s.partitions, s.embedded_kafka) == (8, True)


@pytest.mark.parametrize(("name", "value"), [
    ("LIVETRACK_PARTITIONS", "many"), ("LIVETRACK_H3_RESOLUTION", "16"), ("LIVETRACK_H3_RESOLUTION", "-1"),
])
def test_bad_values_are_refused(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_arguments_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LIVETRACK_GATEWAY_PORT", "9000")
    s = Settings(gateway_port=9100, gateway_host="0.0.0.0")
    assert s.gateway_port == 9100
    assert s.gateway_url == "http://0.0.0.0:9100"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka_port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.kafka_bootstrap = "elsewhere:9092"  # type: ignore[misc]
    assert (s.kafka_port, s.bootstrap) == (19092, "127.0.0.1:19092")


def test_every_setting_is_documented() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_the_switch_interval_is_set_from_settings() -> None:
    before = sys.getswitchinterval()
    try:
        set_switch_interval(Settings(switch_interval_ms=2.5))
        assert sys.getswitchinterval() == pytest.approx(0.0025)
    finally:
        sys.setswitchinterval(before)
