"""The Faust-stream path: a Faust agent that hands its topic to the agent runtime in batches.

Faust reads the topic (its consumer, its assignment); `take_events` hands over up to `batch_max`
events at a time and acks them once the runtime returned (after the commit). Events of a partition
a bug stopped are held, so Faust never commits past them, and the partition is paused.
"""
from __future__ import annotations

from typing import Any, Mapping

import faust
import faust.types
from faust.streams import Stream
from faust.types import TP

from agents.runtime import Agent, AgentRuntime
from infra.faustcompat import hold
from infra.inbound import Inbound

__all__ = ["inbound_of", "register_batched"]


def inbound_of(event: faust.EventT[Any]) -> Inbound:
    """A Faust event as the agents take it."""
    m = event.message
    raw = m.headers or ()
    headers = tuple((str(k), bytes(v or b"")) for k, v in (raw.items() if isinstance(raw, Mapping) else raw))
    return Inbound(m.topic, m.partition, m.offset, int(m.timestamp * 1000), m.key, m.value, event, headers)


def register_batched(app: faust.App, topic: faust.TopicT, agent: Agent, runtime: AgentRuntime, *,
                     name: str, batch_max: int, batch_within_s: float) -> faust.types.AgentT[Any]:
    """A Faust agent named `name` on `topic` running `agent` through `runtime`, batch by batch."""

    async def consume(stream: faust.types.StreamT[Any]) -> None:
        assert isinstance(stream, Stream)  # take_events is Stream's, not in StreamT's interface
        async for events in stream.take_events(batch_max, within=batch_within_s):
            await runtime.run(agent, [inbound_of(e) for e in events])
            stopped = [e for e in events if runtime.is_stopped(inbound_of(e))]
            for event in stopped:
                hold(event)  # never acked: Faust commits nothing of a stopped partition from here on
            if stopped:
                app.consumer.pause_partitions({TP(e.message.topic, e.message.partition) for e in stopped})

    consume.__name__ = consume.__qualname__ = name
    return app.agent(topic, name=name)(consume)
