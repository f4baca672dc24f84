"""The agent runtime: runs an agent over a batch of records and commits what it decided.

Every agent, whichever consumer reads its topic (the batch feed or Faust's stream), is a thin
loop over pure decisions: `step(tx, record)` decides one record into a Transaction, `end(tx)`
adds what the batch as a whole sends. The runtime owns what surrounds that, the same for all:

- rejected input (undecodable, invalid, refused: `Rejected`) is dead-lettered with its reason,
  and nothing of that record's step is kept;
- a bug (any other exception) stops the record's partition loudly: an error log with topic,
  partition and offset, `livetrack_partition_stopped`, the worker's /healthz not ready; the batch
  is decided again without that partition, whose records are never committed from then on;
- the transaction is committed in the agent's declared order (tables.transaction), transient
  produce errors retried with bounded backoff and counted; a record Kafka refuses for good stops
  the batch's partitions like a bug.

The caller commits the input offsets (the feed stores them; Faust acks its events) of every
record not in a stopped partition.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

from agents.errors import Rejected
from agents.metrics import WorkerMetrics
from infra.clock import InputClock
from infra.inbound import Inbound
from infra.producer import AsyncProducer, ProduceError
from schemas.avro import AvroCodec, codec_for
from schemas.records import DeadLetter
from tables.transaction import Backoff, Order, Transaction, commit

__all__ = ["Agent", "AgentRuntime", "DeadLetters", "Faults", "Stopped", "decode"]

log = logging.getLogger(__name__)
TP = tuple[str, int]
T = TypeVar("T", bound=Mapping[str, Any])


def decode(codec: AvroCodec[T], record: Inbound) -> T:
    """The record's value decoded; Rejected when it is not a record of the codec's schema."""
    if record.value is None:
        raise Rejected(f"undecodable {codec.record.__name__}: no value (a tombstone)")
    try:
        value: T = codec.loads(record.value)
        return value
    except Exception as exc:  # any malformed bytes: fastavro raises many types
        raise Rejected(f"undecodable {codec.record.__name__}: {type(exc).__name__}: {exc}") from None


class DeadLetters:
    """An agent's dead-letter topic: what it cannot accept, with where it came from and why."""

    def __init__(self, topic: str, clock_ms: Callable[[], int]) -> None:
        self.topic = topic
        self.clock_ms = clock_ms
        self.codec = codec_for(DeadLetter)
        self.count = 0

    def send(self, tx: Transaction, record: Inbound, reason: str, value: bytes | None = None) -> None:
        """Dead-letter `value` (default: the whole record) of `record`."""
        key = record.key.decode(errors="replace") if isinstance(record.key, bytes) else None
        letter = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                  "reason": reason[:500], "key": key, "value": value if value is not None else record.value,
                  "ts": self.clock_ms()}
        self.count += 1
        # Where and why, never the payload: it may hold a person's position.
        log.warning("dead-lettered %s: %s", record.where, reason)
        tx.send(self.topic, self.codec.dumps(letter), key=record.key)


class Agent(Protocol):
    """What the runtime runs: a name, its dead letters, a commit order and the steps."""

    name: str
    dead_letters: DeadLetters
    order: Order

    async def prepare(self, records: Sequence[Inbound]) -> None:
        """Before deciding (may wait); nothing may be decided here."""

    def step(self, tx: Transaction, record: Inbound) -> None:
        """Decide one record into `tx`; raise Rejected for input it will not apply."""

    def end(self, tx: Transaction) -> None:
        """What the batch as a whole sends, after its last step."""

    def aborted(self) -> None:
        """The batch's transaction was given up: drop what memory holds beyond the tables."""


@dataclass(frozen=True)
class Stopped:
    """A partition stopped by a bug: where, and why."""

    agent: str
    topic: str
    partition: int
    offset: int
    error: str


class Faults:
    """Faults injected for the fault tests, `agent:point[:n]`: `rides:acked0:3` kills the worker with
    SIGKILL right after the first phase of the third non-empty commit of the rides agent is acked
    (points: acked<i>, stored<i>, committed); `drivers:bug:2` raises a KeyError in the drivers
    agent's step of its second record, as a bug would."""

    def __init__(self, spec: str, crash: Callable[[str], None] | None = None) -> None:
        self.agent, self.point, self.nth = "", "", 0
        if spec:
            agent, point, *nth = spec.split(":")
            self.agent, self.point, self.nth = agent, point, int(nth[0]) if nth else 1
        self.crash = crash or _kill
        self._commits = 0
        self._steps = 0

    def step(self, agent: str) -> None:
        """Before each step of `agent`: the injected bug, when its record comes."""
        if agent == self.agent and self.point == "bug":
            self._steps += 1
            if self._steps == self.nth:
                raise KeyError(f"injected bug in {agent}")

    def counter(self, agent: str) -> Callable[[str], None] | None:
        """The fault hook of one commit of `agent`, or None when no fault is set for it."""
        if agent != self.agent:
            return None
        self._commits += 1
        nth = self._commits

        def hook(point: str) -> None:
            if point == self.point and nth == self.nth:
                log.warning("fault injected: %s at %s of commit %d", agent, point, nth)
                self.crash(point)

        return hook


def _kill(point: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class AgentRuntime:
    """Runs agents' batches (see the module docstring); one per worker."""

    producer: AsyncProducer
    metrics: WorkerMetrics
    clock_ms: Callable[[], int]
    faults: Faults = field(default_factory=lambda: Faults(""))
    backoff: Backoff = field(default_factory=Backoff)
    stopped: dict[TP, Stopped] = field(default_factory=dict)
    input_clock: InputClock | None = None  # a replay's: each record is decided at its own time

    @property
    def healthy(self) -> bool:
        return not self.stopped

    def is_stopped(self, record: Inbound) -> bool:
        return (record.topic, record.partition) in self.stopped

    async def run(self, agent: Agent, records: Sequence[Inbound],
                  commit_inputs: Callable[[Sequence[Inbound]], None] | None = None) -> list[Inbound]:
        """Decide and commit `records`, then `commit_inputs` with the ones whose offsets may be
        committed (none of a stopped partition); returns those."""
        todo = [r for r in records if not self.is_stopped(r)]
        while todo:
            await agent.prepare(todo)
            tx = self._decide(agent, todo)  # no await between prepare's return and the decisions
            if tx is None:  # a bug stopped a partition: decide again without it
                todo = [r for r in todo if not self.is_stopped(r)]
                continue
            fault = self.faults.counter(agent.name) if not tx.empty else None
            started = time.perf_counter()
            try:
                await commit(tx, self.producer, backoff=self.backoff, fault=fault,
                             retried=lambda exc: self.metrics.commit_retries.labels(agent.name).inc())
            except ProduceError as exc:  # refused for good: as a bug, for every partition of the batch
                agent.aborted()
                for first in {(r.topic, r.partition): r for r in todo}.values():
                    self._stop(agent, first, exc)
                return []
            self.metrics.commit_seconds.labels(agent.name).observe(time.perf_counter() - started)
            if commit_inputs is not None:
                commit_inputs(todo)
            if fault is not None:
                fault("committed")
            return todo
        return []

    def _decide(self, agent: Agent, records: Sequence[Inbound]) -> Transaction | None:
        """The batch's transaction, or None when a bug stopped a partition (everything undone)."""
        tx = Transaction(agent.order, agent.name)
        record: Inbound | None = None
        try:
            bugs = self.faults.step if self.faults.agent == agent.name else None
            for record in records:
                if self.input_clock is not None:
                    self.input_clock.deciding(record.timestamp_ms)
                point = tx.savepoint()
                if bugs is not None:
                    bugs(agent.name)
                try:
                    agent.step(tx, record)
                except Rejected as exc:
                    tx.rollback(point)
                    agent.dead_letters.send(tx, record, exc.reason)
                    self.metrics.dead_letters.labels(agent.name).inc()
            record = None
            agent.end(tx)
        except Exception as exc:  # a bug: never dead-lettered as bad input, never retried blindly
            tx.abort()
            agent.aborted()
            for r in [record] if record is not None else records:
                self._stop(agent, r, exc)
            return None
        finally:
            if self.input_clock is not None:
                self.input_clock.decided()
        return tx

    def _stop(self, agent: Agent, record: Inbound, exc: BaseException) -> None:
        topic, partition, offset = record.topic, record.partition, record.offset
        if (topic, partition) in self.stopped:
            return
        stopped = Stopped(agent.name, topic, partition, offset, f"{type(exc).__name__}: {exc}")
        self.stopped[(topic, partition)] = stopped
        self.metrics.partition_stopped.labels(agent.name, topic, str(partition)).set(1)
        log.error("agent %s stopped partition %s[%d] at offset %d: %s", agent.name, topic, partition, offset,
                  stopped.error, exc_info=exc)

