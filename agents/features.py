"""Features agent (topic `cell-activity`, partitioned by H3 cell): windowed supply, demand, surge, speed.

Each sighting and request updates one pane of its cell (table
`cell_to_activity`, written once per pane per batch) and moves the partition's
event time (the max event time seen, "watermark"). After each record, every
window whose end plus grace the watermark passed is closed: counts from the
panes, k-ring smoothing, surge and travel speed for the cells this partition
owns, one CellFeatures record each on `cell-features`, and for the primary
window a `cell:{h3}` push (seq owned here, in `cell_to_features`). Events for
a pane already closed are late: counted in no window, counted in the metrics.

Outputs first, state second (the agent's declared commit Order): the features and
pushes are acked before any state is written, so state never runs ahead of what
was emitted. State goes in three acked phases: new panes and `cell_to_features`,
then the watermark, then the removal of panes no window needs. A crash anywhere
replays the batch: panes
ignore what they hold, the same windows close again with the same values
(at-least-once, duplicates identical), and a final already pushed is not pushed
again. The stored watermark covers written panes only, so a restarted worker
resumes at the last batch it fully wrote and judges replayed events as it did
the first time; panes are removed only once that watermark is stored, so the
replay still finds every pane the windows it closes again need.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import groupby
from typing import Any, Callable, Iterable, Sequence, cast

import h3

from agents.activity import target_partitions
from agents.errors import Rejected
from agents.runtime import DeadLetters, decode
from agents.features_math import Counts, FeaturePolicy, WindowSpec, kring, window_features
from agents.metrics import WorkerMetrics
from agents.panes import (
    Pane,
    PaneSummary,
    apply_presence,
    apply_request,
    apply_sighting,
    closing_windows_near,
    nested_counts,
    new_pane,
    pane_start,
    summarize,
)
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from schemas.partitioning import partition_for
from schemas.topics import CELL_FEATURES, PUSH
from tables.cell_to_activity import PaneKeys, decode_key
from tables.table import Table
from tables.transaction import OUTPUTS, Order, Transaction, removals

__all__ = ["ON_TIME", "OUT_OF_ORDER", "DUPLICATE", "LATE", "FUTURE", "ORDER", "Clock", "FeaturesAgent", "admit",
           "cell_channel"]

log = logging.getLogger(__name__)

ON_TIME, OUT_OF_ORDER, DUPLICATE, LATE, FUTURE = "on_time", "out_of_order", "duplicate", "late", "future"
CELL_PRIORITY = 2  # below driver moves: a cell's features are a slower, summarising signal
CELL_PUSH_TTL_MS = 60_000
# Outputs, then new panes with the cells' latest, then the watermark, then pane removals: a crash
# between any two leaves what a replay of the batch needs. A watermark stored ahead of its batch's
# panes would make replayed events late; panes removed ahead of the watermark would be missing when
# the replay closes the same windows again; latest seqs stored ahead of the watermark only keep
# the replay from pushing finals twice (see _publish).
ORDER = Order("features", (
    frozenset({OUTPUTS}), frozenset({"cell_to_activity", "cell_to_features"}), frozenset({"partition_to_watermark"}),
    frozenset({removals("cell_to_activity")}),
))


def cell_channel(cell: str) -> str:
    return f"cell:{cell}"


@lru_cache(maxsize=1 << 14)
def _boundary(cell: str) -> list[list[float]]:
    """The cell's hexagon as [[lat, lng], ...], so a map can draw it without H3."""
    return [[round(lat, 6), round(lng, 6)] for lat, lng in h3.cell_to_boundary(cell)]


@lru_cache(maxsize=1 << 16)
def _refusal(cell: str, partition: int, resolution: int, k: int, partitions: int) -> str | None:
    """Why an item about `cell` does not belong on `partition`, if it does not."""
    if not h3.is_valid_cell(cell) or h3.get_resolution(cell) != resolution:
        return f"cell {cell!r} is not an H3 cell of resolution {resolution}"
    if partition not in target_partitions(cell, k, partitions):
        return "no cell of this cell's k-ring is on this partition"
    return None


@lru_cache(maxsize=1 << 17)
def _owned_ring(cell: str, k: int, partition: int, partitions: int) -> tuple[str, ...]:
    """The cells within k of `cell` that `partition` owns."""
    return tuple(n for n in kring(cell, k) if partition_for(n, partitions) == partition)


def admit(wm: int | None, ts: int, now_ms: int, policy: FeaturePolicy) -> str:
    """Where an event at `ts` stands against its partition's watermark `wm` (pure)."""
    if ts > now_ms + policy.max_future_ms:
        return FUTURE
    if wm is None or ts >= wm:
        return ON_TIME
    if pane_start(ts, policy.pane_ms) + policy.pane_ms + policy.grace_ms <= wm:
        return LATE  # its pane is closed: windows ending with it are already out
    return OUT_OF_ORDER


@dataclass
class Clock:
    """One partition's watermark (max event time seen) and which cells have a pane when."""

    wm: int | None = None
    closed: int | None = None  # the watermark when windows were last closed
    panes: dict[int, set[str]] = field(default_factory=dict)  # pane start -> cells
    touched: set[str] = field(default_factory=set)  # cells with news since the last close (running updates)

    def note(self, start: int, cell: str, ts: int) -> None:
        self.panes.setdefault(start, set()).add(cell)
        self.wm = ts if self.wm is None else max(self.wm, ts)


class FeaturesAgent:
    """Applies CellActivityBatch records to panes and emits the windows they close."""

    name = "features"
    order = ORDER

    def __init__(
        self, *, panes: Table[Pane], watermarks: Table[typed.Watermark], latest: Table[typed.CellLatest],
        dead_letters: DeadLetters, policy: FeaturePolicy, partitions: int, metrics: WorkerMetrics,
        clock_ms: Callable[[], int],
    ) -> None:
        self.panes = panes
        self.keys = PaneKeys(panes.faust)
        self.watermarks = watermarks
        self.latest = latest
        self.dead_letters = dead_letters
        self.policy = policy
        self.partitions = partitions
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.activity_codec = typed_codec(records.CellActivityBatch, typed.CellActivityBatch)
        self.features_codec = typed_codec(records.CellFeatures, typed.CellFeatures)
        self.push_codec = typed_codec(records.PushMessage, typed.PushMessage)
        self._clocks: dict[int, Clock] | None = None  # loaded from the store on first use
        self._running_at: dict[str, int] = {}
        self._summaries: dict[tuple[int, int], dict[str, PaneSummary]] = {}  # (partition, pane start) ->
        self._tally: Counter[tuple[str, str, str]] = Counter()  # metric increments of this batch
        self._now = 0
        self._tx: Transaction | None = None  # the batch being decided (the agent runs one at a time)
        self._first_close: int | None = None
        self.records = 0  # records processed, for tests and benchmarks

    def forget(self) -> None:
        """Drop what is kept in memory (partitions moved, or a batch given up): reloaded from the store."""
        self._clocks = None
        self._running_at.clear()
        self._summaries.clear()
        self.panes.forget()
        self.watermarks.forget()
        self.latest.forget()

    async def prepare(self, records: Sequence[Inbound]) -> None:
        self._now = self.clock_ms()
        self._first_close = None

    def step(self, tx: Transaction, record: Inbound) -> None:
        self._tx = tx
        batch: typed.CellActivityBatch = decode(self.activity_codec, record)
        partition = record.partition
        clock = self.clock(partition)
        for s in batch["sightings"]:
            self._guarded(tx, record, clock, s, "sighting")
        for r in batch["requests"]:
            self._guarded(tx, record, clock, r, "request")
        # Close right away, not after the whole batch: a window is out as soon as it can be.
        now = self.clock_ms()
        if self._close(partition, now) and self._first_close is None:
            self._first_close = now
        self.records += 1

    def _guarded(self, tx: Transaction, record: Inbound, clock: "Clock",
                 item: typed.CellSighting | typed.CellRequest, kind: str) -> None:
        try:
            self._apply(clock, record.partition, item, kind)
        except Rejected as exc:  # one bad item: dead-lettered, the rest of the record goes on
            self.dead_letters.send(tx, record, f"bad {kind}: {exc.reason}", None)

    def end(self, tx: Transaction) -> None:
        self._tx = tx
        for labels, n in self._tally.items():
            self.metrics.feature_events.labels(*labels).inc(n)
        self._tally.clear()
        first = self._first_close
        if first is not None:
            tx.committed.append(lambda: self.metrics.close_to_ack.observe(max(0, self.clock_ms() - first) / 1000))
        self._tx = None

    def aborted(self) -> None:
        self._tally.clear()
        self._tx = None
        self.forget()  # memory may be ahead of the store now

    @property
    def tx(self) -> Transaction:
        assert self._tx is not None, "the features agent reads and writes only while deciding a batch"
        return self._tx

    def clock(self, partition: int) -> Clock:
        """The partition's clock (all clocks are loaded from the stored panes on first use)."""
        if self._clocks is None:
            self._clocks = self._load()
        return self._clocks.setdefault(partition, Clock())

    def _load(self) -> dict[int, Clock]:
        clocks: dict[int, Clock] = {}
        for key, _pane in self.panes.stored():
            cell, partition, start = decode_key(key)
            clocks.setdefault(partition, Clock()).panes.setdefault(start, set()).add(cell)
        for key, watermark in self.watermarks.stored():
            clock = clocks.setdefault(int(key), Clock())
            # Stored after its batch's windows were emitted: they are all closed.
            clock.wm = clock.closed = watermark["ts"]
            log.info("features partition %s resumes at event time %s with %d panes", int(key), clock.wm,
                     sum(len(c) for c in clock.panes.values()))
        return clocks

    def _pane(self, cell: str, partition: int, start: int) -> Pane | None:
        value: Pane | None = self.panes.get(self.keys.encode(cell, partition, start), partition)
        return value

    def _apply(self, clock: Clock, partition: int, item: typed.CellSighting | typed.CellRequest, kind: str) -> None:
        cell, ts = item["cell"], item["ts"]
        problem = _refusal(cell, partition, self.policy.resolution, self.policy.k, self.partitions)
        if problem:
            raise Rejected(problem)
        outcome = admit(clock.wm, ts, self._now, self.policy)
        copy = "own" if partition_for(cell, self.partitions) == partition else "neighbour"
        if outcome in (LATE, FUTURE):
            self._tally[(kind, outcome, copy)] += 1
            if outcome == LATE:
                self.metrics.late_by.observe(((clock.wm or ts) - ts) / 1000)  # a _seconds histogram
            return
        start = pane_start(ts, self.policy.pane_ms)
        pane = self._pane(cell, partition, start) or new_pane()
        if kind == "request":
            changed = apply_request(pane, cast(typed.CellRequest, item))
        elif copy == "own":
            changed = apply_sighting(pane, cast(typed.CellSighting, item), self.policy)
        else:  # a neighbour's cell: only who was there counts here (smoothing), not how they moved
            changed = apply_presence(pane, cast(typed.CellSighting, item))
        clock.note(start, cell, ts)
        if changed:
            self.tx.put(self.panes, self.keys.encode(cell, partition, start), pane, partition)
            clock.touched.add(cell)
        self._tally[(kind, outcome if changed else DUPLICATE, copy)] += 1

    def _close(self, partition: int, now: int) -> int:
        """Emit every window the watermark passed since the last close, then drop panes no window
        needs; how many features were emitted."""
        clock = self.clock(partition)
        if clock.wm is None or not clock.panes:
            return 0
        if clock.wm == clock.closed:
            # Nothing new to close; panes a crash left behind after storing the watermark go now.
            self._remove_expired(partition, clock)
            return 0
        tx = self.tx
        self.metrics.watermark.labels(str(partition)).set(clock.wm)
        watermark: typed.Watermark = {"ts": clock.wm}
        tx.put(self.watermarks, str(partition), watermark, partition)
        p = self.policy
        first, last = min(clock.panes), max(clock.panes)
        # Windows ending by the first pane hold nothing; none after the last pane's reach either.
        after = first if clock.closed is None else max(first, clock.closed - p.grace_ms)
        until = min(clock.wm - p.grace_ms, last + p.max_window_ms)
        clock.closed = clock.wm
        emitted = 0
        ends = closing_windows_near(p.specs, clock.panes, p.max_window_ms, after, until)
        for end, specs in groupby(ends, key=lambda e: e[0]):
            emitted += self._emit_end(partition, clock, end, [spec for _, spec in specs], now)
        if p.running_ms and clock.touched:
            emitted += self._emit_running(partition, clock, now)
        clock.touched.clear()
        self._remove_expired(partition, clock)
        return emitted

    def _remove_expired(self, partition: int, clock: Clock) -> None:
        """Delete the panes no window needs any more (their removal is committed after the watermark)."""
        assert clock.wm is not None
        reach = self.policy.max_window_ms + self.policy.grace_ms
        for start in [s for s in clock.panes if s + reach <= clock.wm]:
            for cell in clock.panes.pop(start):
                self.tx.delete(self.panes, self.keys.encode(cell, partition, start), partition)
            self._summaries.pop((partition, start), None)

    def _summaries_of(self, partition: int, clock: Clock, start: int, closed: bool) -> dict[str, PaneSummary]:
        """Summaries of the partition's panes starting at `start`, by cell; those of closed panes
        never change, so they are kept until the panes expire."""
        held = self._summaries.get((partition, start))
        if held is not None:
            return held
        out = {}
        for cell in clock.panes.get(start, ()):
            pane = self._pane(cell, partition, start)
            if pane is not None:
                # Only a cell's own partition has all its fixes: travel is computed there only.
                own = partition_for(cell, self.partitions) == partition
                out[cell] = summarize(pane, self._earlier(partition, cell, start) if own else [], self.policy)
        if closed:
            self._summaries[(partition, start)] = out
        return out

    def _earlier(self, partition: int, cell: str, start: int) -> list[tuple[int, Pane]]:
        """The cell's panes a segment into the pane at `start` can come from, nearest first."""
        out = []
        prev = start - self.policy.pane_ms
        while prev + self.policy.pane_ms > start - self.policy.speed_max_gap_ms:
            pane = self._pane(cell, partition, prev)
            if pane is not None:
                out.append((prev, pane))
            prev -= self.policy.pane_ms
        return out

    def _counts(self, partition: int, clock: Clock, end: int, sizes: list[int]) -> dict[int, dict[str, Counts]]:
        """size -> cell -> counts over [end - size, end), for the cells with a pane in that window."""
        p = self.policy
        closed_until = (clock.wm or 0) - p.grace_ms - p.pane_ms  # panes starting by then are closed
        by_cell: dict[str, list[tuple[int, PaneSummary]]] = {}
        for start in range(end - p.pane_ms, end - sizes[-1] - 1, -p.pane_ms):
            for cell, summary in self._summaries_of(partition, clock, start, start <= closed_until).items():
                by_cell.setdefault(cell, []).append((start, summary))
        out: dict[int, dict[str, Counts]] = {size: {} for size in sizes}
        for cell, summaries in by_cell.items():
            for size, counts in nested_counts(summaries, end, sizes).items():
                out[size][cell] = counts
        return out

    def _owned_near(self, partition: int, cells: Iterable[str]) -> list[str]:
        """Cells this partition owns within k of any of `cells`: the ones whose features can change."""
        near: set[str] = set()
        for cell in cells:
            near.update(_owned_ring(cell, self.policy.k, partition, self.partitions))
        return sorted(near)

    def _emit_end(self, partition: int, clock: Clock, end: int, specs: list[WindowSpec], now: int, *,
                  final: bool = True, only: set[str] | None = None) -> int:
        """Features of the windows of `specs` ending at `end`, for the owned cells near activity (or
        `only` those); how many records."""
        by_size = self._counts(partition, clock, end, sorted({spec.size_ms for spec in specs}))
        emitted = 0
        for spec in specs:
            counts = by_size[spec.size_ms]
            if not counts:
                continue
            cells = self._owned_near(partition, counts)
            if only is not None:
                cells = [c for c in cells if c in only]
            primary = spec == self.policy.primary
            for f in window_features(cells, counts, spec, end, self.policy, final=final, emitted_ts=now):
                self.tx.send(CELL_FEATURES.name, self.features_codec.dumps(f), key=f["cell"].encode())
                if primary:
                    self._publish(partition, f, now)
            self.metrics.windows_closed.labels(spec.label, str(final).lower()).inc(len(cells))
            emitted += len(cells)
        return emitted

    def _emit_running(self, partition: int, clock: Clock, now: int) -> int:
        """Running (not final) features of the open primary window, at most every running_ms per cell."""
        assert clock.wm is not None
        spec = self.policy.primary
        due = {c for c in self._owned_near(partition, clock.touched)
               if now - self._running_at.get(c, 0) >= self.policy.running_ms}
        if not due:
            return 0
        for cell in due:
            self._running_at[cell] = now
        end = (clock.wm // spec.step_ms + 1) * spec.step_ms
        return self._emit_end(partition, clock, end, [spec], now, final=False, only=due)

    def _publish(self, partition: int, features: typed.CellFeatures, now: int) -> None:
        """Push to `cell:{h3}` with the next seq; final features also become the cell's latest."""
        cell = features["cell"]
        held: typed.CellLatest = self.latest.get(cell, partition) or {"features": None, "push_seq": 0}
        last = held["features"]
        if features["final"] and last and features["end_ts"] <= last["end_ts"]:
            return  # a replay after a crash closing this window again: it was pushed, under its seq
        latest: typed.CellLatest = {"features": features if features["final"] else last,
                                    "push_seq": held["push_seq"] + 1}
        self.tx.put(self.latest, cell, latest, partition)
        data = {**features, "window": f"{features['kind'].lower()}-{features['size_s']}s",
                "boundary": _boundary(cell)}
        push: typed.PushMessage = {
            "channel": cell_channel(cell), "seq": latest["push_seq"], "type": "cell.features",
            "priority": CELL_PRIORITY, "ttl_ms": CELL_PUSH_TTL_MS, "sent_ts": now, "event_ts": now,
            "data": json.dumps(data, separators=(",", ":")),
        }
        self.tx.send(PUSH.name, self.push_codec.dumps(push), key=push["channel"].encode())

