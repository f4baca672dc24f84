"""The legacy platform's queue rows reach livetrack's customers: PostgreSQL -> Debezium ->
`legacy-order-events` -> the legacy orders agent -> `order-events` -> the orders agent -> `order:{id}`."""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import psycopg
import pytest

from infra.connect import LocalConnect
from legacy.jobs import Written, advance_order, create_order
from tests.integration.fixtures import Pipeline, Subscriber

pytestmark = pytest.mark.integration


async def test_an_order_the_legacy_jobs_move_reaches_its_customer_in_order_and_once(
        pipeline: Pipeline, legacy_dsn: str, connect_worker: LocalConnect) -> None:
    order_id, customer = f"lo-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    committed: list[Written] = []
    async with Subscriber(pipeline.url, pipeline.token("customer", customer)) as sub:
        async with await psycopg.AsyncConnection.connect(legacy_dsn) as conn:
            committed.append(await create_order(conn, order_id, customer, {"lat": 60.17, "lng": 24.94},
                                                {"lat": 60.18, "lng": 24.94}))
            deadline = time.monotonic() + 30
            while not (ack := await sub.subscribe(f"order:{order_id}"))["ok"]:  # until the gateway knows the order
                assert time.monotonic() < deadline, ack
                await asyncio.sleep(0.2)
            assert await advance_order(conn, order_id, rng, rollback=True) is not None  # never published
            while (step := await advance_order(conn, order_id, rng)) is not None:
                committed.append(step)
        last: dict[str, Any] = ack["snapshot"]["data"]
        seen = [last["status"]]
        while seen[-1] != committed[-1].status:
            update = await sub.next(30)
            if update["type"] == "order.status":
                last = update["data"]
                seen.append(last["status"])
    statuses = [w.status for w in committed]
    assert seen == statuses[statuses.index(seen[0]):]  # every status from the first one seen, in commit order
    # The timeline: every committed row once, by its row id, none of the rolled-back transaction's.
    assert [(s["status"], s["event_id"], s["source"]) for s in last["timeline"]] == [
        (w.status, f"legacy:{w.row_id}", "legacy") for w in committed]
