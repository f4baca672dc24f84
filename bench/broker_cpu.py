"""Broker CPU per produce request, by JVM options: the measurement behind LIVETRACK_KAFKA_JVM_OPTS.

For each option set a fresh broker is started, warmed for 10 s, then given one
small record at a time at a fixed rate with linger 1 ms (about one produce
request per record) while its CPU is read.

    python -m bench.broker_cpu [--rate 600] [--seconds 8]
"""
from __future__ import annotations

import argparse
import time

import psutil
from confluent_kafka import Producer

from bench.harness import bench_settings, cpu_s, emit
from infra.broker import LocalBroker, kafka_running
from schemas.topics import PUSH

OPTION_SETS = {"c2": "-XX:+UseG1GC", "c1": "-XX:+UseG1GC -XX:TieredStopAtLevel=1"}


def produce(bootstrap: str, rate: float, seconds: float) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all", "enable.idempotence": True})
    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        producer.produce(PUSH.name, key=f"k{i % 600}".encode(), value=b"x" * 120)
        producer.poll(0)
        delay = t0 + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    producer.flush()


def cpu_pct(settings_opts: str, rate: float, seconds: float) -> float:
    settings = bench_settings(app_id=f"livetrack-brokercpu-{int(time.time())}", kafka_jvm_opts=settings_opts)
    with kafka_running(settings, fresh=True):
        broker = psutil.Process(LocalBroker(settings).pid())
        produce(settings.bootstrap, rate, 10)  # warm-up
        c0, t0 = cpu_s(broker), time.perf_counter()
        produce(settings.bootstrap, rate, seconds)
        return round((cpu_s(broker) - c0) / (time.perf_counter() - t0) * 100, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=600.0, help="records (about requests) per second")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    figures: dict[str, float] = {"requests_per_s": args.rate}
    for name, opts in OPTION_SETS.items():
        figures[f"broker_cpu_pct_{name}"] = cpu_pct(opts, args.rate, args.seconds)
    emit(figures)


if __name__ == "__main__":
    main()
