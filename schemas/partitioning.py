"""Which partition a key belongs to: Kafka's default (Java) murmur2 partitioner.

The gateway puts pings of many drivers in one record on an explicit
partition; this is how it picks the partition a keyed producer (Java,
aiokafka, librdkafka's murmur2_random) would have picked for each driver.
"""
from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

__all__ = ["partition_for"]


@lru_cache(maxsize=1 << 18)  # murmur2 is pure Python (~15 us); keys (drivers, cells) repeat
def partition_for(key: str, partitions: int) -> int:
    """Partition of `key` among `partitions`, as Kafka's Java client computes it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
