"""What the fan-out (gateway.manager) keeps per /live connection: its slow-path queue and its unacked events.

A connection whose Engine.IO queue holds `backlog` unsent frames (its socket
is not draining) is slow: its updates wait in its SendQueue instead, per
channel in seq order, events first, state updates coalesced to the latest,
expired ones dropped, and go out as the socket drains (served every tick).
Events (must_ack) are resent every `retry_ms` until the client acks them or
their TTL ends (Unacked).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.auth import Principal
from gateway.channels import Update

__all__ = ["Connection", "SendQueue", "Unacked"]


@dataclass(slots=True)
class _Entry:
    update: Update
    skipped: int  # seqs of this channel left out just before this one


class SendQueue:
    """A slow connection's undelivered updates.

    Per channel in seq order, so a client never sees a channel's seqs out of
    order; channels holding an event are served first, the rest round-robin.
    A state update supersedes a queued one of the same type in its channel,
    which is dropped and counted in the `skipped` of the entry that follows
    it; an entry whose TTL has ended is dropped the same way.
    """

    def __init__(self) -> None:
        self._channels: OrderedDict[str, list[_Entry]] = OrderedDict()  # round-robin order
        self._urgent: OrderedDict[str, None] = OrderedDict()  # channels holding an event
        self._carry: dict[str, int] = {}  # skips the channel's next queued update must tell
        self.size = 0
        self.coalesced = 0
        self.expired = 0

    def __len__(self) -> int:
        return self.size

    def holds(self, channel: str) -> bool:
        """True when an update of `channel` must queue (behind others, or to tell a skip)."""
        return self.size > 0 or channel in self._carry

    def put(self, update: Update, skipped: int = 0) -> None:
        """Queue `update` behind its channel's entries, superseding a queued state update of its type."""
        channel = update.channel
        entries = self._channels.setdefault(channel, [])
        skipped += self._carry.pop(channel, 0)
        if not update.must_ack:
            for i, entry in enumerate(entries):
                if not entry.update.must_ack and entry.update.type == update.type:
                    del entries[i]  # at most one per type is ever queued
                    self.size -= 1
                    self.coalesced += 1
                    if i < len(entries):
                        entries[i].skipped += entry.skipped + 1
                    else:
                        skipped += entry.skipped + 1
                    break
        entries.append(_Entry(update, skipped))
        self.size += 1
        if update.must_ack:
            self._urgent[channel] = None

    def skip(self, channel: str) -> None:
        """The channel's next seq will never come (it expired on the way): the next queued update says so."""
        self._carry[channel] = self._carry.get(channel, 0) + 1

    def pop(self, now_ms: float) -> tuple[Update, int] | None:
        """The next update to send and the skips it tells; expired ones are dropped on the way."""
        while self.size:
            channel = next(iter(self._urgent or self._channels))
            entries = self._channels[channel]
            entry = entries.pop(0)
            self.size -= 1
            self._requeue(channel, entries)
            if not entry.update.expired(now_ms):
                return entry.update, entry.skipped
            self.expired += 1
            if entries:
                entries[0].skipped += entry.skipped + 1
            else:
                self._carry[channel] = self._carry.get(channel, 0) + entry.skipped + 1
        return None

    def _requeue(self, channel: str, entries: list[_Entry]) -> None:
        self._urgent.pop(channel, None)
        if not entries:
            del self._channels[channel]
            return
        self._channels.move_to_end(channel)
        if any(e.update.must_ack for e in entries):
            self._urgent[channel] = None

    def drop(self, channel: str) -> None:
        """Forget the channel (unsubscribed, or resubscribed: the ack carried what was missed)."""
        self.size -= len(self._channels.pop(channel, ()))
        self._urgent.pop(channel, None)
        self._carry.pop(channel, None)


class Unacked:
    """Events sent and not acked yet, each resent every retry_ms until acked or expired."""

    def __init__(self) -> None:
        self._due: dict[tuple[str, int], tuple[Update, float]] = {}
        self.acked: dict[str, int] = {}  # channel -> highest seq the client acked

    def __len__(self) -> int:
        return len(self._due)

    def sent(self, update: Update, retry_at_ms: float) -> None:
        if update.seq > self.acked.get(update.channel, 0):
            self._due[(update.channel, update.seq)] = (update, retry_at_ms)

    def ack(self, channel: str, seq: int) -> None:
        """The client has every seq of `channel` up to `seq` (acks are cumulative)."""
        if seq <= self.acked.get(channel, 0):
            return
        self.acked[channel] = seq
        for key in [k for k in self._due if k[0] == channel and k[1] <= seq]:
            del self._due[key]

    def due(self, now_ms: float, retry_ms: int) -> list[Update]:
        """Events to resend now (rescheduled); events whose TTL ended are given up."""
        out: list[Update] = []
        for key, (update, at) in list(self._due.items()):
            if update.expired(now_ms):
                del self._due[key]
            elif at <= now_ms:
                self._due[key] = (update, now_ms + retry_ms)
                out.append(update)
        return out

    def drop(self, channel: str) -> None:
        for key in [k for k in self._due if k[0] == channel]:
            del self._due[key]


@dataclass(eq=False, slots=True)
class Connection:
    """One /live client: who it is and what it has not got yet (what it watches: its rooms)."""

    sid: str
    eio_sid: str
    principal: Principal
    caller: str | None = None  # what the abuse limits count it under (gateway.limits); None: unlimited
    channels: set[str] = field(default_factory=set)  # subscribed to
    queue: SendQueue = field(default_factory=SendQueue)
    unacked: Unacked = field(default_factory=Unacked)
    dropped: bool = False
