"""Where a ride-keyed agent finds drivers whose cells live on other partitions.

`cell_to_drivers` is partitioned by H3 cell, the rides agent by ride: the cells of one k-ring sit
on many partitions, most of them owned by other workers. So every worker keeps a read-only
replica of the whole table, fed by the table's own changelog (`CellDriversView`, followed from
`now - membership TTL` on start: an older value has no fresh driver in it). The replica is a
hint, never the truth: it may lag by a batch or two, and a driver in it may meanwhile have been
reserved or assigned. That is safe because nothing is decided on it: a candidate is only offered
a ride after the offers agent, on the partition that owns the driver, grants the reservation by
check-and-set; a stale candidate costs one refused reservation and the next one is tried.
"""
from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from typing import Any, Collection, Mapping

import h3
from mode import Service

from agents.estimates import Candidate
from infra.settings import Settings
from infra.tail import TopicTail
from schemas import records, typed
from schemas.avro import typed_codec

__all__ = ["CellDriversView", "ViewService", "candidates_in", "ring_cells"]

log = logging.getLogger(__name__)
Available = Mapping[str, Mapping[str, int]]  # cell -> available driver -> last seen (ms)


@lru_cache(maxsize=1 << 16)
def ring_cells(cell: str, k: int) -> tuple[str, ...]:
    """The cells within k steps of `cell` (its k-ring, the cell itself included)."""
    return tuple(h3.grid_disk(cell, k))


@lru_cache(maxsize=1 << 16)
def _centre(cell: str) -> tuple[float, float]:
    return h3.cell_to_latlng(cell)  # type: ignore[no-any-return]


def candidates_in(
    available: Available, cells: Collection[str], *, now_ms: int, max_age_ms: int, exclude: Collection[str] = (),
) -> list[Candidate]:
    """Available drivers seen recently in `cells`, at their cell's centre (a driver caught in two
    cells while it moves counts once, where it was seen last)."""
    found: dict[str, Candidate] = {}
    for cell in cells:
        drivers = available.get(cell)
        if not drivers:
            continue
        lat, lng = _centre(cell)
        for driver, seen in drivers.items():
            if driver in exclude or now_ms - seen > max_age_ms:
                continue
            held = found.get(driver)
            if held is None or held.seen_ts < seen:
                found[driver] = Candidate(driver, lat, lng, seen)
    return list(found.values())


class CellDriversView:
    """This worker's replica of `cell_to_drivers` (available drivers only), all partitions."""

    def __init__(self) -> None:
        self.available: dict[str, dict[str, int]] = {}
        self.ready = asyncio.Event()

    async def apply(self, batch: list[tuple[str, typed.CellDrivers]]) -> None:
        """Take the latest value of each cell (the tail's handler)."""
        for cell, value in batch:
            if value["available"]:
                self.available[cell] = value["available"]
            else:
                self.available.pop(cell, None)

    def candidates(self, cell: str, k: int, *, now_ms: int, max_age_ms: int,
                   exclude: Collection[str] = ()) -> list[Candidate]:
        return candidates_in(self.available, ring_cells(cell, k), now_ms=now_ms, max_age_ms=max_age_ms,
                             exclude=exclude)


class ViewService(Service):
    """Follows the `cell_to_drivers` changelog into a CellDriversView for as long as the worker runs."""

    def __init__(self, view: CellDriversView, settings: Settings, changelog: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view = view
        self.settings = settings
        self.changelog = changelog
        self.tail: TopicTail[tuple[str, typed.CellDrivers]] | None = None

    async def on_started(self) -> None:
        self.add_future(self._follow())

    async def _follow(self) -> None:
        codec = typed_codec(records.CellDrivers, typed.CellDrivers)

        def decode(key: bytes | None, value: bytes) -> tuple[str, typed.CellDrivers]:
            assert key is not None, "a changelog record has its key"
            return key.decode(), codec.loads(value)

        while not self.should_stop:
            tail = TopicTail(
                self.settings.bootstrap, self.changelog, decode,
                self.view.apply, replay_ms=self.settings.membership_ttl_ms + self.settings.membership_refresh_ms,
                client_id=f"{self.settings.app_id}-cells-view",
            )
            try:
                await tail.start()
            except Exception as exc:  # the changelog appears once Faust has declared the table
                log.info("waiting for %s: %s", self.changelog, exc)
                await tail.stop()
                await asyncio.sleep(0.5)
                continue
            self.tail = tail
            await tail.ready.wait()
            self.view.ready.set()
            return

    async def on_stop(self) -> None:
        if self.tail is not None:
            await self.tail.stop()
