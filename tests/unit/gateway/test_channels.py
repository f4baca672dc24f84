"""gateway.channels: channel names, push message -> update, per-channel history, snapshots and resume."""
from __future__ import annotations

import json
from typing import Any

import pytest

import socketio

from gateway.channels import CHANNEL_RE, ChannelStore, Update, update_from_push
from gateway.errors import InvalidInput
from gateway.ingest import parse_locations
from schemas.avro import codec_for
from schemas.records import PushMessage

T0 = 1_732_170_000_000


def _update(seq: int, channel: str = "driver:d-1", *, type: str = "driver.location", sent: int | None = None,
            ttl_ms: int = 10_000, must_ack: bool = False, **data: Any) -> Update:
    """An update of `channel`, sent at T0 + seq seconds unless `sent` says otherwise."""
    return Update(channel=channel, seq=seq, type=type, ts=T0 + seq, priority=7 if must_ack else 3,
                  sent_ts=T0 + seq * 1000 if sent is None else sent, ttl_ms=ttl_ms,
                  data_json=json.dumps({"seq": seq, **data}), must_ack=must_ack)


def _store(max_len: int = 100, max_age_ms: int = 600_000) -> ChannelStore:
    return ChannelStore(max_len=max_len, max_age_ms=max_age_ms)


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


# --- Update -----------------------------------------------------------------------------------------


def test_frame_is_what_python_socketio_would_send() -> None:
    """The fan-out builds the frame itself (once per update): python-socketio must read it as its own."""
    for update, skipped in ((_update(3, lat=1.5), 0), (_update(4, must_ack=True, ttl_ms=0, s="é\"x"), 2)):
        frame = update.packet(skipped)
        decoded = socketio.packet.Packet(encoded_packet=frame.data)
        assert (decoded.packet_type, decoded.namespace, decoded.id) == (socketio.packet.EVENT, "/live", None)
        assert decoded.data == ["update", update.payload(skipped)]
        assert frame.packet_type == 4  # an Engine.IO MESSAGE
    update = _update(5)
    assert update.packet() is update.packet()  # built once, shared by every recipient


def test_payload_fields() -> None:
    assert _update(5, lat=1.5).payload() == {
        "channel": "driver:d-1", "seq": 5, "type": "driver.location", "ts": T0 + 5, "priority": 3,
        "expires_ts": T0 + 5000 + 10_000, "data": {"seq": 5, "lat": 1.5},
    }
    event = _update(6, must_ack=True, ttl_ms=0).payload(skipped=2)
    assert event["ack"] is True and event["skipped"] == 2 and "expires_ts" not in event


def test_expiry_counts_from_sent_ts_and_zero_ttl_never_expires() -> None:
    u = _update(1, sent=T0, ttl_ms=1000)
    assert not u.expired(T0 + 999) and u.expired(T0 + 1000)
    assert not _update(1, sent=T0, ttl_ms=0).expired(T0 + 10**12)


# --- ChannelStore: history -------------------------------------------------------------------------


def test_first_update_of_a_channel_is_taken() -> None:
    store = _store()
    assert store.latest("driver:d-1") is None and len(store) == 0 and store.head("driver:d-1") == 0
    assert store.offer(_update(3)) is True
    assert store.latest("driver:d-1") == _update(3) and store.head("driver:d-1") == 3
    assert len(store) == 1


@pytest.mark.parametrize("seq", [5, 4, 1])
def test_equal_or_older_seq_is_refused(seq: int) -> None:
    store = _store()
    store.offer(_update(5, lat=1.0))
    assert store.offer(_update(seq, lat=2.0)) is False
    assert store.latest("driver:d-1") == _update(5, lat=1.0)


def test_channels_are_independent() -> None:
    store = _store()
    assert store.offer(_update(9, "driver:d-1"))
    assert store.offer(_update(1, "driver:d-2"))
    assert store.offer(_update(2, "cell:8928308280fffff"))
    assert store.offer(_update(1, "driver:d-1")) is False
    assert [store.head(c) for c in ("driver:d-1", "driver:d-2", "cell:8928308280fffff")] == [9, 1, 2]


def _fill(store: ChannelStore, seqs: range, **kw: Any) -> None:
    for seq in seqs:
        assert store.offer(_update(seq, **kw))


def _seqs(resume: Any) -> list[tuple[int, int]]:
    return [(u.seq, skipped) for u, skipped in resume.updates]


def test_resume_sends_what_was_missed_in_order() -> None:
    store = _store()
    _fill(store, range(1, 11))
    now = T0 + 10_500  # every update still within its TTL
    resume = store.resume("driver:d-1", 6, now)
    assert (resume.recovered, resume.head, _seqs(resume)) == (True, 10, [(7, 0), (8, 0), (9, 0), (10, 0)])
    assert store.resume("driver:d-1", 10, now).updates == [] and store.resume("driver:d-1", 10, now).recovered
    assert store.resume("driver:d-1", 0, now).updates[0][0].seq == 1


def test_a_since_ahead_of_the_head_misses_nothing() -> None:
    """Another gateway may be a few messages ahead of this one: the client keeps what it has."""
    store = _store()
    _fill(store, range(1, 4))
    resume = store.resume("driver:d-1", 7, T0 + 3500)
    assert (resume.recovered, resume.head, resume.updates) == (True, 3, [])
    assert store.resume("driver:unknown", 7, T0).recovered


def test_size_bound_makes_older_gaps_unrecoverable() -> None:
    store = _store(max_len=5)
    _fill(store, range(1, 21))
    now = T0 + 20_500
    assert _seqs(store.resume("driver:d-1", 15, now)) == [(16, 0), (17, 0), (18, 0), (19, 0), (20, 0)]
    resume = store.resume("driver:d-1", 14, now)
    assert (resume.recovered, resume.head, resume.updates) == (False, 20, [])
    assert resume.snapshot == _update(20)


def test_age_bound_makes_older_gaps_unrecoverable() -> None:
    store = _store(max_age_ms=5_000)
    _fill(store, range(1, 11), ttl_ms=0)
    now = T0 + 10_000  # updates sent before T0 + 5,000 (seq < 5) are too old
    assert store.resume("driver:d-1", 4, now).recovered is True
    assert store.resume("driver:d-1", 3, now).recovered is False


def test_expired_updates_are_left_out_of_a_resume_and_declared() -> None:
    store = _store()
    _fill(store, range(1, 11), ttl_ms=3_000)  # seq n sent at T0 + n s, gone at T0 + n s + 3 s
    resume = store.resume("driver:d-1", 2, T0 + 10_000)  # 3..7 have expired
    assert _seqs(resume) == [(8, 5), (9, 0), (10, 0)]
    resume = store.resume("driver:d-1", 2, T0 + 14_000)  # all expired: nothing to send, the head says so
    assert (resume.recovered, resume.head, resume.updates) == (True, 10, [])


def test_a_hole_in_what_the_gateway_received_restarts_the_history() -> None:
    """A replay window that began mid-channel: only a contiguous run can prove nothing is missing."""
    store = _store()
    _fill(store, range(5, 8))
    assert store.offer(_update(10))
    assert store.resume("driver:d-1", 9, T0 + 10_500).recovered is True
    assert store.resume("driver:d-1", 8, T0 + 10_500).recovered is False


def test_snapshot_is_the_latest_unless_an_expired_event() -> None:
    store = _store()
    assert store.snapshot("driver:d-1", T0) is None
    store.offer(_update(1, lat=1.0))
    store.offer(_update(2, lat=2.0))
    assert store.snapshot("driver:d-1", T0 + 10**9) == _update(2, lat=2.0)  # a position stays the state
    store.offer(_update(3, type="ride.offer", must_ack=True, ttl_ms=5_000))
    assert store.snapshot("driver:d-1", T0 + 4_000) == _update(3, type="ride.offer", must_ack=True, ttl_ms=5_000)
    assert store.snapshot("driver:d-1", T0 + 8_000) == _update(2, lat=2.0)  # an expired offer is never shown


def test_drivers_lists_every_recent_driver_snapshot() -> None:
    store = _store(max_age_ms=60_000)
    store.offer(_update(1, "driver:a"))
    store.offer(_update(2, "driver:b"))
    store.offer(_update(1, "ride:r"))
    store.offer(_update(1, "driver:old", sent=T0 - 120_000))
    assert sorted(u.channel for u in store.drivers(T0 + 3_000)) == ["driver:a", "driver:b"]


def test_sweep_trims_silent_channels() -> None:
    store = _store(max_age_ms=5_000)
    _fill(store, range(1, 4), ttl_ms=0)
    store.sweep(T0 + 60_000)
    assert store.resume("driver:d-1", 2, T0 + 60_000).recovered is False
    assert store.latest("driver:d-1") == _update(3, ttl_ms=0)  # GET still knows the driver


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
    update = update_from_push(_decoded_push(), ack_priority=5)
    assert update == Update(
        channel="driver:d-1", seq=12, type="driver.location", ts=T0 + 40, priority=3, sent_ts=T0 + 900,
        ttl_ms=10_000, data_json=_decoded_push()["data"], must_ack=False,
    )
    assert update.data() == {"driver_id": "d-1", "lat": 37.7, "lng": -122.4, "status": "AVAILABLE"}
    assert update_from_push(_decoded_push(priority=5), ack_priority=5).must_ack is True


def test_update_ts_is_the_event_time_not_the_send_time() -> None:
    update = update_from_push(_decoded_push(event_ts=T0 + 1, sent_ts=T0 + 99_999), ack_priority=5)
    assert update.ts == T0 + 1 and update.expires_ts == T0 + 99_999 + 10_000


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", "null", ""])
def test_push_data_that_is_not_a_json_object_is_refused(data: str) -> None:
    """It is embedded verbatim in every client's frame."""
    with pytest.raises(ValueError):
        update_from_push(_decoded_push(data=data), ack_priority=5)


def test_pushes_feed_the_store_in_seq_order() -> None:
    store = _store()
    for seq in (1, 3, 2, 3):
        store.offer(update_from_push(_decoded_push(seq=seq), ack_priority=5))
    snapshot = store.snapshot("driver:d-1", T0)
    assert snapshot is not None and snapshot.seq == 3 and snapshot.data()["status"] == "AVAILABLE"
