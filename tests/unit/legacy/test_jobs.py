"""legacy.jobs: the order lifecycle and the payloads the legacy jobs queue (pure parts)."""
from __future__ import annotations

import random

from legacy.db import SCHEMA_PATH
from legacy.jobs import FINAL, STATUSES, event_payload, next_status


def test_every_walk_ends_in_a_final_status_in_lifecycle_order() -> None:
    rng = random.Random(7)
    for _ in range(500):
        status: str | None = "CREATED"
        walk = []
        while status is not None:
            walk.append(status)
            status = next_status(status, rng)
        assert walk[-1] in FINAL and not FINAL & set(walk[:-1])
        assert [STATUSES.index(s) for s in walk if s not in FINAL] == sorted(STATUSES.index(s) for s in walk if s not in FINAL)
        assert len(walk) <= 7


def test_final_statuses_do_not_move() -> None:
    assert all(next_status(status, random.Random()) is None for status in FINAL)


def test_payloads_carry_only_what_their_status_has() -> None:
    assert event_payload("o-1", "CONFIRMED", 2, 1000) == {"order_id": "o-1", "status": "CONFIRMED", "ts": 1000, "seq": 2}
    assigned = event_payload("o-1", "COURIER_ASSIGNED", 3, 1001, courier_id="courier-007")
    assert assigned["courier_id"] == "courier-007" and "reason" not in assigned
    assert event_payload("o-1", "FAILED", 7, 1002, reason="not at home")["reason"] == "not at home"


def test_queue_table_is_a_debezium_outbox() -> None:
    sql = SCHEMA_PATH.read_text()
    for column in ("id             bigserial PRIMARY KEY", "aggregatetype  text NOT NULL DEFAULT 'order'",
                   "aggregateid    text NOT NULL", "type           text NOT NULL", "payload        jsonb NOT NULL"):
        assert column in sql
    assert sql.count("IF NOT EXISTS") == 3  # idempotent
