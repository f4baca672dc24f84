"""schemas.partitioning.partition_for: the partition Kafka's Java client picks for a key."""
from __future__ import annotations

import random
import string

import pytest

from schemas.partitioning import partition_for

MASK32 = 0xFFFFFFFF
# Kafka's own vectors (clients/.../utils/UtilsTest.java testMurmur2): Utils.murmur2 as signed Java ints.
KAFKA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
    # Short keys, one per tail length (as used by Akka's Kafka-compatible sharding).
    "1": -1993445489, "12": 126087238, "123": -267702483, "1234": -1614185708, "12345": -1188365604,
}
PARTITION_COUNTS = (1, 2, 3, 4, 8, 12, 16, 50, 100, 1000)
BIGGEST = 0x7FFFFFFF  # with this many partitions the partition is the whole positive hash


def _java_murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, returning a signed 32-bit int as Java does."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & MASK32
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & MASK32
        k ^= k >> r
        k = (k * m) & MASK32
        h = (h * m) & MASK32
        h ^= k
    tail = data[length - length % 4:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & MASK32
    h ^= h >> 13
    h = (h * m) & MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def _java_partition(key: str, partitions: int) -> int:
    """BuiltInPartitioner.partitionForKey: toPositive(murmur2(keyBytes)) % numPartitions."""
    return (_java_murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def _random_keys(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_.:" + "éüß中文字ß€😀"
    keys = [f"d-{rng.randrange(10**6)}" for _ in range(n // 2)]
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 41))) for _ in range(n - n // 2)]
    return keys


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_reference_matches_kafkas_vectors(key: str, expected: int) -> None:
    assert _java_murmur2(key.encode()) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_known_vectors(key: str, expected: int) -> None:
    for partitions in PARTITION_COUNTS + (BIGGEST,):
        assert partition_for(key, partitions) == (expected & 0x7FFFFFFF) % partitions, partitions


def test_the_well_known_21_vector() -> None:
    # murmur2(b"21") == -973932308: toPositive keeps the low 31 bits.
    assert partition_for("21", BIGGEST) == (-973932308 & 0x7FFFFFFF) == 1173551340
    assert partition_for("21", 8) == 1173551340 % 8 == 4


@pytest.mark.parametrize("partitions", PARTITION_COUNTS + (BIGGEST,))
def test_random_keys_match_the_java_partitioner(partitions: int) -> None:
    keys = _random_keys(400, seed=partitions)
    assert [partition_for(k, partitions) for k in keys] == [_java_partition(k, partitions) for k in keys]


def test_keys_are_hashed_as_utf8() -> None:
    for key in ("driver-é", "司机-1", "🚗"):
        assert partition_for(key, BIGGEST) == _java_partition(key, BIGGEST)
    # Meaningful: another encoding of the same key hashes elsewhere.
    assert partition_for("司机-1", BIGGEST) != (_java_murmur2("司机-1".encode("utf-16-le")) & 0x7FFFFFFF)


def test_every_partition_is_used() -> None:
    keys = _random_keys(400, seed=99)
    assert {partition_for(k, 8) for k in keys} == set(range(8))


def test_empty_key() -> None:
    assert partition_for("", 16) == _java_partition("", 16)


def test_result_is_stable_and_cached() -> None:
    key = "d-cache-probe-7f3a"
    first = partition_for(key, 12)
    hits = partition_for.cache_info().hits
    assert partition_for(key, 12) == first
    assert partition_for.cache_info().hits == hits + 1
    # The partition count is part of the cache key.
    assert partition_for(key, 7) == _java_partition(key, 7)
    assert partition_for(key, 12) == first == _java_partition(key, 12)
