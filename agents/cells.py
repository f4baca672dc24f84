"""Cells agent (topic `driver-cells`, partitioned by H3 cell): keep each cell's drivers.

Values are decoded Avro dicts: CellMembership in, CellDrivers in the table.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from tables.table import Table
from tables.transaction import TOGETHER, Transaction

__all__ = ["CellsAgent", "apply_membership"]

Cell = typed.CellDrivers


def _fresh(entries: Mapping[str, int], now_ms: int, ttl_ms: int) -> dict[str, int]:
    return {d: ts for d, ts in entries.items() if now_ms - ts < ttl_ms}


def apply_membership(prev: Cell | None, m: typed.CellMembership, ttl_ms: int) -> Cell:
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

    name = "cells"
    order = TOGETHER

    def __init__(self, *, cells: Table[Cell], dead_letters: DeadLetters, ttl_ms: int) -> None:
        self.cells = cells
        self.dead_letters = dead_letters
        self.ttl_ms = ttl_ms
        self.codec = typed_codec(records.CellMembershipBatch, typed.CellMembershipBatch)

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        # A batch often moves several drivers in and out of one cell: each cell is written once a batch.
        batch: typed.CellMembershipBatch = decode(self.codec, record)
        for m in batch["changes"]:
            cell = m["cell"]
            tx.put(self.cells, cell, apply_membership(self.cells.get(cell, record.partition), m, self.ttl_ms),
                   record.partition)

    def end(self, tx: Transaction) -> None:
        return None

    def aborted(self) -> None:
        return None
