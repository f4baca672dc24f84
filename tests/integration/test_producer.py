"""infra.producer on the real broker: order, acked offsets, a failed record failing only its group's wait."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from infra.producer import AsyncProducer, ProduceError
from infra.settings import Settings
from infra.topics import end_offsets, read_topic
from schemas.topics import DRIVER_STATUS

TOPIC = DRIVER_STATUS.name  # any declared topic; these tests read back only what they wrote


@pytest.fixture
async def producer(kafka_settings: Settings) -> AsyncIterator[AsyncProducer]:
    p = AsyncProducer(kafka_settings.bootstrap)
    await p.start()
    yield p
    await p.close()


async def test_a_group_lands_in_send_order_per_partition_with_its_offsets(
    kafka_settings: Settings, producer: AsyncProducer,
) -> None:
    before = end_offsets(kafka_settings, TOPIC)
    group = producer.group()
    for i in range(60):
        producer.send(group, TOPIC, f"{i}".encode(), key=b"k", partition=i % 3)
    await group.wait()
    got = read_topic(kafka_settings, TOPIC, before)
    for p in range(3):
        mine = [m for m in got if m.partition() == p]
        assert [int(m.value()) for m in mine] == list(range(p, 60, 3))
        assert group.offsets[(TOPIC, p)] == mine[-1].offset()


async def test_a_record_kafka_refuses_fails_the_wait_and_the_others_still_land(
    kafka_settings: Settings, producer: AsyncProducer,
) -> None:
    before = end_offsets(kafka_settings, TOPIC)
    group = producer.group()
    producer.send(group, TOPIC, b"first", partition=0)
    producer.send(group, TOPIC, b"x" * 2_000_000, partition=0)  # over the request size limit
    producer.send(group, TOPIC, b"last", partition=0)
    with pytest.raises(ProduceError, match="1 record\\(s\\) not accepted: MessageSizeTooLarge"):
        await group.wait()
    later = producer.group()
    producer.send(later, TOPIC, b"after", partition=0)
    await later.wait()  # the producer goes on
    assert [m.value() for m in read_topic(kafka_settings, TOPIC, before)] == [b"first", b"last", b"after"]


async def test_close_delivers_what_is_queued(kafka_settings: Settings, producer: AsyncProducer) -> None:
    before = end_offsets(kafka_settings, TOPIC)
    group = producer.group()
    for i in range(20):
        producer.send(group, TOPIC, f"{i}".encode(), key=f"d-{i}".encode())
    await producer.close()  # nobody waited on the group
    assert sorted(int(m.value()) for m in read_topic(kafka_settings, TOPIC, before)) == list(range(20))
    with pytest.raises(ProduceError, match="not started"):
        producer.send(producer.group(), TOPIC, b"late")
