"""Offers agent (topic `offers`, partitioned by driver like `locations`): dispatch commands to the desk.

The rides agent sends a command here for a driver it does not hold (another worker's partition);
the gateway sends a driver's ACCEPT and DECLINE. Each is decided by the driver desk
(agents.desk, the reservation protocol in agents.reservations), state first: the driver's state
and outbox are acked before anything the command decided is sent. Read through agents.feed.
"""
from __future__ import annotations

from typing import Sequence

from agents.desk import DriverDesk
from agents.errors import Rejected
from agents.runtime import DeadLetters, decode
from infra.inbound import Inbound
from schemas import records, typed
from schemas.avro import typed_codec
from tables.transaction import STATE_FIRST, Transaction

__all__ = ["OffersAgent"]


class OffersAgent:
    """Applies OfferCommand records through the driver desk."""

    name = "offers"
    order = STATE_FIRST

    def __init__(self, *, desk: DriverDesk, dead_letters: DeadLetters) -> None:
        self.desk = desk
        self.dead_letters = dead_letters
        self.codec = typed_codec(records.OfferCommand, typed.OfferCommand)

    async def prepare(self, batch: Sequence[Inbound]) -> None:
        return None

    def step(self, tx: Transaction, record: Inbound) -> None:
        cmd: typed.OfferCommand = decode(self.codec, record)
        if self.desk.partition(cmd["driver_id"]) != record.partition:
            raise Rejected("driver hashes to another partition")
        self.desk.decide(tx, cmd, record.partition)

    def end(self, tx: Transaction) -> None:
        self.desk.end(tx)

    def aborted(self) -> None:
        return None
