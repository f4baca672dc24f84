"""infra.producer without a broker: what close() does with records it could not hand over."""
from __future__ import annotations

import asyncio

import pytest

from infra.producer import AsyncProducer, ProduceError


async def test_records_never_handed_over_fail_their_group_at_close() -> None:
    producer = AsyncProducer("127.0.0.1:1")
    producer._sender = asyncio.create_task(asyncio.Event().wait())  # started, but aiokafka never takes a record
    group = producer.group()
    producer.send(group, "push", b"x", key=b"k")
    await producer.close(timeout_s=0.05)
    with pytest.raises(ProduceError, match="1 record\\(s\\) not accepted: ProduceError: producer closed before"):
        await asyncio.wait_for(group.wait(), 1)
