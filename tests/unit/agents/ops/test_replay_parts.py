"""The parts of a replay that need no broker: what is copied, overrides, names, redrive checks, the clock."""
from __future__ import annotations

import pytest

from agents.ops.dlq import revalidated
from agents.ops.errors import OpsError
from agents.ops.replay import external
from agents.ops.shadow import new_shadow, parse_overrides, shadow_settings
from agents.commands import ride_command
from infra.clock import InputClock
from infra.settings import Settings
from infra.shadow import prefixed, prefixed_specs
from schemas import records
from schemas.avro import codec_for
from schemas.partitioning import partition_for


def test_only_commands_from_outside_the_agents_are_copied() -> None:
    codec = codec_for(records.RideCommand)
    rider = codec.dumps(ride_command("r1", "CANCEL", 1, "rider", "u1"))
    system = codec.dumps(ride_command("r1", "TIMEOUT", 1, "system", "rides"))
    assert external("ride-commands", rider) and not external("ride-commands", system)
    assert external("locations", b"anything") and external("ride-commands", b"garbage")


def test_overrides_are_settings_and_never_a_shadows_own_names() -> None:
    assert parse_overrides(["LIVETRACK_PUSH_MIN_DISTANCE_M=50"]) == {"push_min_distance_m": "50"}
    with pytest.raises(OpsError):
        parse_overrides(["app_id=x"])
    with pytest.raises(OpsError):
        parse_overrides(["no_such_setting=1"])
    shadow = new_shadow(Settings(app_id="lt"), "try-1", {"push_min_distance_m": "50"})
    s = shadow_settings(Settings(app_id="lt"), shadow)
    assert (s.app_id, s.topic_prefix, s.push_min_distance_m) == ("lt-shadow-try-1", "shadow-try-1.", 50.0)
    with pytest.raises(OpsError):
        new_shadow(Settings(), "Bad Name", {})


def test_declared_topics_are_prefixed_and_changelogs_are_not() -> None:
    assert prefixed("s.", "push") == "s.push" and prefixed("s.", "lt-driver_to_state-changelog").startswith("lt-")
    assert {spec.name for spec in prefixed_specs("s.")} >= {"s.locations", "s.push"}


def test_a_valid_ping_is_redriven_as_a_batch_on_its_partition_and_an_invalid_one_refused() -> None:
    ping = {"driver_id": "d-9", "seq": 1, "lat": 37.0, "lng": -122.0, "fix_ts": 1_700_000_000_000,
            "received_ts": 1_700_000_000_000, "accuracy": None, "speed": None, "bearing": None}
    value, partition = revalidated("locations", 0, codec_for(records.LocationEvent).dumps(ping), 4)
    assert partition == partition_for("d-9", 4)
    assert codec_for(records.LocationBatch).loads(value)["events"][0]["driver_id"] == "d-9"
    with pytest.raises(ValueError, match="lat"):
        revalidated("locations", 0, codec_for(records.LocationEvent).dumps({**ping, "lat": 999.0}), 4)


def test_the_input_clock_is_the_decided_records_time_else_the_latest_seen() -> None:
    clock = InputClock()
    clock.deciding(2_000)
    clock.deciding(1_000)
    assert clock() == 1_000
    clock.decided()
    assert clock() == 2_000
