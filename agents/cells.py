"""Cells agent (topic `driver-cells`, partitioned by H3 cell): keep each cell's drivers.

Values are decoded Avro dicts: CellMembership in, CellDrivers in the table.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import faust

from agents.batching import DeadLetters, bind_event, decode_records, register_batched
from infra.producer import AsyncProducer
from schemas.records import CellMembershipBatch
from tables.writer import TableWriter

__all__ = ["CellsAgent", "apply_membership", "register"]

Cell = dict[str, Any]  # a decoded CellDrivers


def _fresh(entries: Mapping[str, int], now_ms: int, ttl_ms: int) -> dict[str, int]:
    return {d: ts for d, ts in entries.items() if now_ms - ts < ttl_ms}


def apply_membership(prev: Cell | None, m: Mapping[str, Any], ttl_ms: int) -> Cell:
    """The cell after one membership message; silent drivers (older than ttl) drop out (pure)."""
    now, driver = m["ts"], m["driver_id"]
    drivers = _fresh(prev["drivers"] if prev else {}, now, ttl_ms)
    available = _fresh(prev["available"] if prev else {}, now, ttl_ms)
    if m["op"] == "LEAVE":
        # A late LEAVE must not evict a newer JOIN of the same driver.
        if drivers.get(driver, -1) <= now:
            drivers.pop(driver, None)
            available.pop(driver, None)
    else:
        drivers[driver] = max(now, drivers.get(driver, now))
        if m["status"] == "AVAILABLE":
            available[driver] = drivers[driver]
        else:
            available.pop(driver, None)
    return {"drivers": drivers, "available": available}


class CellsAgent:
    """Applies CellMembershipBatch records to `cell_to_drivers`."""

    def __init__(self, *, cells: TableWriter, producer: AsyncProducer, dead_letters: DeadLetters,
                 ttl_ms: int) -> None:
        self.cells = cells
        self.producer = producer
        self.dead_letters = dead_letters
        self.ttl_ms = ttl_ms

    async def process(self, events: Sequence[faust.EventT]) -> None:
        """Apply a batch of records; return once the changelog is acked by Kafka."""
        group = self.producer.group()
        for event, batch in decode_records(events, CellMembershipBatch, self.dead_letters, group):
            bind_event(event)
            # A batch often moves several drivers in and out of one cell: write each cell once.
            touched: dict[str, Cell] = {}
            for m in batch["changes"]:
                with self.dead_letters.guard(group, event, "bad membership"):
                    prev = touched.get(m["cell"]) or self.cells.get(m["cell"])
                    touched[m["cell"]] = apply_membership(prev, m, self.ttl_ms)
            for cell, value in touched.items():
                self.cells.set(cell, value, event)
        bind_event(None)
        self.cells.flush(group)
        await group.wait()
        self.cells.persist_offsets(group)


def register(app: faust.App, driver_cells: faust.TopicT, agent: CellsAgent, *, batch_max: int,
             batch_within_s: float) -> faust.types.AgentT:
    """Attach the cells agent to `app`."""
    return register_batched(app, driver_cells, "track_cell_drivers", agent.process, batch_max=batch_max,
                            batch_within_s=batch_within_s)
