"""The foundation end to end on the real broker: ping -> Kafka -> Faust -> Kafka -> Socket.IO."""
from __future__ import annotations

import json
import signal
import uuid
import aiohttp
import pytest

from infra.producer import AsyncProducer
from infra.settings import Settings
from schemas.avro import codec_for
from schemas.partitioning import partition_for
from schemas.records import DeadLetter, LocationBatch
from schemas.topics import LOCATIONS, LOCATIONS_DLQ
from tests.integration.fixtures import Pipeline, Subscriber, end_offsets, ping, read_topic

pytestmark = pytest.mark.integration


def driver() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


async def post(pipeline: Pipeline, body: object) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=pipeline.headers()) as http:
        async with http.post(f"{pipeline.url}/v1/locations", json=body) as resp:
            return resp.status, await resp.json()


async def test_ping_reaches_subscriber_and_snapshot(pipeline: Pipeline) -> None:
    d = driver()
    async with Subscriber(pipeline.url, pipeline.token()) as client:
        ack = await client.subscribe(f"driver:{d}")
        assert ack == {"ok": True, "channel": f"driver:{d}", "seq": 0, "snapshot": None}
        status, body = await post(pipeline, ping(d, 1))
        assert (status, body) == (202, {"accepted": 1})
        update = await client.next()
    assert update["channel"] == f"driver:{d}" and update["seq"] == 1 and update["type"] == "driver.location"
    assert update["data"]["driver_id"] == d and update["data"]["lat"] == pytest.approx(ping(d, 1)["lat"])
    assert update["data"]["status"] == "AVAILABLE" and update["data"]["cell"]
    async with aiohttp.ClientSession(headers=pipeline.headers()) as http:
        async with http.get(f"{pipeline.url}/v1/drivers/{d}") as resp:
            assert resp.status == 200
            assert (await resp.json())["seq"] == 1
        async with http.get(f"{pipeline.url}/v1/drivers/{driver()}") as resp:
            assert resp.status == 404
    async with Subscriber(pipeline.url, pipeline.token()) as late:
        ack = await late.subscribe(f"driver:{d}")
    assert ack["snapshot"]["seq"] == 1 and ack["snapshot"]["data"]["driver_id"] == d


async def test_batch_of_drivers_each_get_their_update(pipeline: Pipeline) -> None:
    drivers = [driver() for _ in range(20)]
    async with Subscriber(pipeline.url, pipeline.token()) as client:
        for d in drivers:
            await client.subscribe(f"driver:{d}")
        status, body = await post(pipeline, [ping(d, 1) for d in drivers])
        assert (status, body) == (202, {"accepted": 20})
        got = {(await client.next())["channel"] for _ in drivers}
    assert got == {f"driver:{d}" for d in drivers}


async def test_bad_input_is_refused_and_produces_nothing(pipeline: Pipeline) -> None:
    before = end_offsets(pipeline.settings, LOCATIONS.name)
    good, bad = ping(driver(), 1), {**ping(driver(), 1), "lat": 123.0, "seq": -5}
    status, body = await post(pipeline, [good, bad, {"driver_id": "x"}])
    assert status == 400
    problems = {(p["index"], p["field"]) for p in body["problems"]}
    assert {(1, "lat"), (1, "seq"), (2, "lng"), (2, "ts")} <= problems and not any(i == 0 for i, _ in problems)
    status, body = await post(pipeline, [ping(driver(), 1)] * (pipeline.settings.ingest_max_items + 1))
    assert status == 413
    async with aiohttp.ClientSession(headers=pipeline.headers()) as http:
        big = b"[" + b" " * pipeline.settings.ingest_max_body_bytes + b"]"
        async with http.post(f"{pipeline.url}/v1/locations", data=big,
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
        async with http.post(f"{pipeline.url}/v1/locations", data=b"{not json") as resp:
            assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    assert end_offsets(pipeline.settings, LOCATIONS.name) == before


async def test_bad_records_are_dead_lettered_and_the_worker_keeps_going(pipeline: Pipeline) -> None:
    s = pipeline.settings
    dlq_before = end_offsets(s, LOCATIONS_DLQ.name)
    d, elsewhere = driver(), driver()
    while partition_for(elsewhere, s.partitions) == partition_for(d, s.partitions):
        elsewhere = driver()
    codec = codec_for(LocationBatch)
    out_of_range = {**_event(d, 1), "lat": 200.0}
    producer = AsyncProducer(s.bootstrap)
    await producer.start()
    group = producer.group()
    part = partition_for(d, s.partitions)
    producer.send(group, LOCATIONS.name, b"\x00garbage", partition=part)
    producer.send(group, LOCATIONS.name, codec.dumps({"events": [out_of_range]}), partition=part)
    producer.send(group, LOCATIONS.name, codec.dumps({"events": [_event(elsewhere, 1)]}), partition=part)
    await group.wait()
    await producer.close()
    async with Subscriber(pipeline.url, pipeline.token()) as client:
        await client.subscribe(f"driver:{d}")
        assert (await post(pipeline, ping(d, 2)))[0] == 202
        update = await client.next()
    assert update["data"]["seq"] == 2  # the worker survived all three and still works
    letters = [codec_for(DeadLetter).loads(m.value()) for m in read_topic(s, LOCATIONS_DLQ.name, dlq_before)]
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert len(letters) == 3, reasons
    assert "undecodable" in reasons and "lat must be <= 90" in reasons and "another partition" in reasons
    assert all(letter["topic"] == LOCATIONS.name and letter["partition"] == part for letter in letters)


async def test_worker_restart_keeps_state_from_rocksdb_and_from_changelog(pipeline: Pipeline) -> None:
    d = driver()
    async with Subscriber(pipeline.url, pipeline.token()) as client:
        await client.subscribe(f"driver:{d}")
        for seq in (1, 2, 3):
            await post(pipeline, ping(d, seq))
        assert [(await client.next())["seq"] for _ in range(3)] == [1, 2, 3]

        pipeline.stop_worker(signal.SIGKILL)  # no clean shutdown: RocksDB and changelog as they were
        pipeline.start_worker()
        await post(pipeline, ping(d, 2))  # stale after restart: must be refused
        await post(pipeline, ping(d, 4))
        update = await client.next()
        assert (update["seq"], update["data"]["seq"]) == (4, 4)  # push seq went on from the stored state

        pipeline.stop_worker()
        pipeline.wipe_worker_state()  # no RocksDB at all: everything comes back from the changelog
        pipeline.start_worker()
        await post(pipeline, ping(d, 3))
        await post(pipeline, ping(d, 5))
        update = await client.next()
        assert (update["seq"], update["data"]["seq"]) == (5, 5)


def test_explicit_partitions_match_keyed_records(kafka_settings: Settings) -> None:
    """Batch records go where librdkafka's murmur2 would put each driver's keyed record (an
    implementation independent of `partition_for`, which is aiokafka's, as is our producer's)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic, n = f"it-partitioning-{uuid.uuid4().hex[:6]}", 6
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap})
    admin.create_topics([NewTopic(topic, n, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap, "partitioner": "murmur2_random"})
    keys = [f"driver-{i}" for i in range(300)]
    for key in keys:
        producer.produce(topic, b"x", key=key.encode())
    assert producer.flush(30) == 0
    placed = {m.key().decode(): m.partition() for m in read_topic(kafka_settings, topic)}
    assert placed == {k: partition_for(k, n) for k in keys}


def _event(driver_id: str, seq: int) -> dict:
    p = ping(driver_id, seq)
    return {"driver_id": driver_id, "seq": seq, "lat": p["lat"], "lng": p["lng"], "fix_ts": p["ts"],
            "received_ts": p["ts"], "accuracy": None, "speed": None, "bearing": None}


def test_pushes_are_avro_readable(kafka_settings: Settings) -> None:
    """An analytics consumer reads `push` with the .avsc alone (no livetrack code)."""
    import io

    import fastavro

    from schemas.avro import AVSC_DIR
    from schemas.topics import PUSH

    schema = fastavro.parse_schema(json.loads((AVSC_DIR / "PushMessage.avsc").read_text()))
    records = read_topic(kafka_settings, PUSH.name)
    assert records, "earlier tests pushed updates"
    for m in records[:50]:
        msg = fastavro.schemaless_reader(io.BytesIO(m.value()[10:]), schema, None)
        data = json.loads(msg["data"])  # a driver's move or offer, a ride's or order's state, a user's notification
        named = ("driver_id", "ride_id", "cell", "order_id", "notification_id", "unread")
        assert msg["channel"] == m.key().decode() and any(data.get(k) is not None for k in named)
