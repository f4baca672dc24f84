"""gateway.channels: channel names, the latest update per channel, push message -> update."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gateway.channels import CHANNEL_RE, ChannelStore, Update, update_from_push
from gateway.errors import InvalidInput
from gateway.ingest import parse_locations
from schemas.avro import codec_for
from schemas.records import PushMessage

T0 = 1_732_170_000_000


def _update(seq: int, channel: str = "driver:d-1", **data: Any) -> Update:
    return Update(channel=channel, seq=seq, type="driver.location", ts=T0 + seq, priority=3, ttl_ms=10_000,
                  data={"seq": seq, **data})


def _subscribable(channel: str) -> bool:
    """As gateway.sockets decides a subscribe request's channel."""
    return CHANNEL_RE.match(channel) is not None


# --- channel names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [
    "driver:d-1", "ride:r_1", "cell:8928308280fffff", "fleet", "driver:D.9", "ride:" + "a" * 64, "driver:x",
])
def test_accepted_channels(channel: str) -> None:
    assert _subscribable(channel)


@pytest.mark.parametrize("channel", [
    "driver:", "ride:", "cell:", "foo:1", "fleet:1", "fleets", "Driver:d-1", "driver d-1", "driver:d 1",
    " fleet", "fleet ", "driver:d-1 ", "driver:" + "a" * 65, "cell:" + "f" * 65, "driver:d/1", "driver:d:1",
    "driver:é", "", ":d-1",
])
def test_refused_channels(channel: str) -> None:
    assert not _subscribable(channel)


def test_trailing_newline_is_refused() -> None:
    assert [c for c in ("fleet\n", "driver:d-1\n") if _subscribable(c)] == []


def test_every_accepted_driver_id_has_a_subscribable_channel() -> None:
    def unreachable(driver_id: str) -> bool:
        """Ingest takes the driver's pings, yet no client can subscribe to them."""
        body = {"driver_id": driver_id, "seq": 1, "lat": 1.0, "lng": 2.0, "ts": T0}
        try:
            parse_locations(body, max_items=1, received_ts=T0)
        except InvalidInput:
            return False
        return not _subscribable(f"driver:{driver_id}")

    assert [d for d in ("jean paul", "fleet:7", "d/1", "josé") if unreachable(d)] == []


# --- ChannelStore ----------------------------------------------------------------------------------


def test_first_update_of_a_channel_is_taken() -> None:
    store = ChannelStore()
    assert store.latest("driver:d-1") is None and len(store) == 0
    assert store.offer(_update(3)) is True
    assert store.latest("driver:d-1") == _update(3)
    assert len(store) == 1


def test_newer_seq_replaces() -> None:
    store = ChannelStore()
    store.offer(_update(3))
    assert store.offer(_update(4)) is True
    assert store.offer(_update(10)) is True  # a gap is still newer
    assert store.latest("driver:d-1") == _update(10)


@pytest.mark.parametrize("seq", [5, 4, 1])
def test_equal_or_older_seq_is_refused(seq: int) -> None:
    store = ChannelStore()
    store.offer(_update(5, lat=1.0))
    assert store.offer(_update(seq, lat=2.0)) is False
    assert store.latest("driver:d-1") == _update(5, lat=1.0)


def test_channels_are_independent() -> None:
    store = ChannelStore()
    assert store.offer(_update(9, "driver:d-1"))
    assert store.offer(_update(1, "driver:d-2"))
    assert store.offer(_update(2, "cell:8928308280fffff"))
    assert store.offer(_update(1, "driver:d-1")) is False
    held = [store.latest(c) for c in ("driver:d-1", "driver:d-2", "cell:8928308280fffff")]
    assert [u.seq if u else None for u in held] == [9, 1, 2]
    assert len(store) == 3


def test_snapshot_is_the_payload_of_the_latest() -> None:
    store = ChannelStore()
    assert store.snapshot("driver:d-1") is None
    store.offer(_update(2, lat=1.5))
    store.offer(_update(3, lat=2.5))
    assert store.snapshot("driver:d-1") == {
        "channel": "driver:d-1", "seq": 3, "type": "driver.location", "ts": T0 + 3,
        "data": {"seq": 3, "lat": 2.5},
    }
    assert store.snapshot("driver:d-2") is None


def test_update_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _update(1).seq = 2  # type: ignore[misc]


# --- update_from_push ------------------------------------------------------------------------------


def _decoded_push(**changes: Any) -> dict[str, Any]:
    """A PushMessage as the bridge gets it: Avro-decoded."""
    msg = {"channel": "driver:d-1", "seq": 12, "type": "driver.location", "priority": 3, "ttl_ms": 10_000,
           "sent_ts": T0 + 900, "event_ts": T0 + 40,
           "data": json.dumps({"driver_id": "d-1", "lat": 37.7, "lng": -122.4, "status": "AVAILABLE"}),
           **changes}
    codec = codec_for(PushMessage)
    return codec.loads(codec.dumps(msg))  # type: ignore[no-any-return]


def test_update_from_push() -> None:
    assert update_from_push(_decoded_push()) == Update(
        channel="driver:d-1", seq=12, type="driver.location", ts=T0 + 40, priority=3, ttl_ms=10_000,
        data={"driver_id": "d-1", "lat": 37.7, "lng": -122.4, "status": "AVAILABLE"},
    )


def test_update_ts_is_the_event_time_not_the_send_time() -> None:
    update = update_from_push(_decoded_push(event_ts=T0 + 1, sent_ts=T0 + 99_999))
    assert update.ts == T0 + 1


def test_pushes_feed_the_store_in_seq_order() -> None:
    store = ChannelStore()
    for seq in (1, 3, 2, 3):
        store.offer(update_from_push(_decoded_push(seq=seq)))
    snapshot = store.snapshot("driver:d-1")
    assert snapshot is not None and snapshot["seq"] == 3 and snapshot["data"]["status"] == "AVAILABLE"
