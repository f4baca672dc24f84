"""librdkafka vs aiokafka under the worker's produce pattern: the measurement behind infra.producer.

One ride moves through the worker as small groups of records, each group spread over many
partitions of several topics and awaited before the next step. This bench produces such groups
(`--fan` records on random partitions of 4 topics x 8 partitions) at `--rate` groups/s with each
producer in turn, on one fresh broker, and reads the broker's and its own CPU (from /proc) and the
time to each group's last ack. librdkafka sends one ProduceRequest per partition
(confluentinc/librdkafka#1700); aiokafka one per broker with every partition that is ready.

    python -m bench.producers [--rate 50] [--fan 20] [--seconds 15]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Awaitable, Callable

import psutil
from confluent_kafka import Producer

from bench.harness import bench_settings, cpu_s, emit, percentiles
from infra.broker import LocalBroker, kafka_running
from infra.producer import AsyncProducer
from infra.topics import ensure_topics
from schemas.topics import OFFERS, PUSH, RIDE_COMMANDS, RIDES

TOPICS = [t.name for t in (PUSH, RIDES, OFFERS, RIDE_COMMANDS)]
PARTITIONS = 8
VALUE = b"x" * 200
WARMUP_S = 5.0
Send = Callable[[list[tuple[str, int]]], Awaitable[None]]


class Librdkafka:
    """The producer infra.producer wrapped before aiokafka: librdkafka, delivery reports polled
    every 0.5 ms on the loop while any are outstanding."""

    def __init__(self, bootstrap: str) -> None:
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                           "linger.ms": 1, "partitioner": "murmur2_random"})
        self.outstanding = 0
        self.poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.poller = asyncio.create_task(self._poll())

    async def send(self, records: list[tuple[str, int]]) -> None:
        done = asyncio.get_running_loop().create_future()
        left = len(records)

        def delivered(err: object, _msg: object) -> None:
            nonlocal left
            left -= 1
            self.outstanding -= 1
            if left == 0 and not done.done():
                done.set_result(None)

        for topic, partition in records:
            self.p.produce(topic, VALUE, key=b"k", partition=partition, on_delivery=delivered)
            self.outstanding += 1
        await done

    async def _poll(self) -> None:
        while True:
            self.p.poll(0)
            await asyncio.sleep(0.0005 if self.outstanding else 0.005)

    async def close(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        await asyncio.to_thread(self.p.flush, 10)


class Aiokafka:
    """infra.producer as the agents use it: a group per step, awaited."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AsyncProducer(bootstrap)

    async def start(self) -> None:
        await self.producer.start()

    async def send(self, records: list[tuple[str, int]]) -> None:
        group = self.producer.group()
        for topic, partition in records:
            self.producer.send(group, topic, VALUE, key=b"k", partition=partition)
        await group.wait()

    async def close(self) -> None:
        await self.producer.close()


PRODUCERS: dict[str, Callable[[str], Librdkafka | Aiokafka]] = {"librdkafka": Librdkafka, "aiokafka": Aiokafka}


async def offer_load(send: Send, rate: float, fan: int, seconds: float) -> list[float]:
    """`rate` groups/s of `fan` records for `seconds`; each group's time to its last ack (ms)."""
    acks: list[float] = []
    running: set[asyncio.Task[None]] = set()

    async def one() -> None:
        t0 = time.perf_counter()
        await send([(random.choice(TOPICS), random.randrange(PARTITIONS)) for _ in range(fan)])
        acks.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        task = asyncio.create_task(one())
        running.add(task)
        task.add_done_callback(running.discard)
        delay = t0 + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*running)
    return acks


async def measure(name: str, bootstrap: str, broker: psutil.Process, rate: float, fan: int,
                  seconds: float) -> dict[str, float]:
    producer = PRODUCERS[name](bootstrap)
    await producer.start()
    me = psutil.Process()
    await offer_load(producer.send, rate, fan, WARMUP_S)
    cpu0, broker0, t0 = cpu_s(me), cpu_s(broker), time.perf_counter()
    acks = await offer_load(producer.send, rate, fan, seconds)
    elapsed = time.perf_counter() - t0
    out = {
        f"{name}_broker_cpu_pct": round((cpu_s(broker) - broker0) / elapsed * 100, 1),
        f"{name}_client_cpu_pct": round((cpu_s(me) - cpu0) / elapsed * 100, 1),
        **percentiles(acks, f"{name}_group_ack"),
    }
    await producer.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=50.0, help="groups per second")
    p.add_argument("--fan", type=int, default=20, help="records per group, on random partitions")
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    settings = bench_settings(app_id=f"livetrack-producers-{int(time.time())}", partitions=PARTITIONS)
    figures: dict[str, float] = {"groups_per_s": args.rate, "records_per_group": args.fan}
    with kafka_running(settings, fresh=True):
        ensure_topics(settings)
        broker = psutil.Process(LocalBroker(settings).pid())
        for name in PRODUCERS:
            figures.update(asyncio.run(measure(name, settings.bootstrap, broker, args.rate, args.fan, args.seconds)))
    emit(figures)


if __name__ == "__main__":
    main()
