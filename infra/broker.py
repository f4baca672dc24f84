"""One Apache Kafka broker in KRaft mode on 127.0.0.1, from Maven Central jars.

`fetch` copies the jars into a cache outside git (once per version), `start`
formats storage on first use and spawns the JVM, `wait_ready` blocks until the
broker answers metadata requests, `stop` ends it by PID.
"""
from __future__ import annotations

import base64
import logging
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from confluent_kafka.admin import AdminClient

from infra.maven import fetch_jars
from infra.processes import pid_from_file, port_in_use, spawn_server, stop_pid
from infra.settings import Settings
from infra.topics import ensure_topics

__all__ = ["BrokerError", "LocalBroker", "kafka_running", "wait_for_cluster"]

log = logging.getLogger(__name__)
KAFKA_DIR = Path(__file__).parent / "kafka"


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started or reached."""


def wait_for_cluster(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Block until `bootstrap` answers a metadata request with at least one broker."""
    # log_level 0: "connection refused" while the broker boots is expected, not news.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except Exception as exc:  # librdkafka raises KafkaException while the broker boots
            last = exc
        time.sleep(0.2)
    raise BrokerError(f"no Kafka broker at {bootstrap} after {timeout_s:.0f}s ({last})")


@dataclass(frozen=True)
class LocalBroker:
    """The embedded broker described by settings (port, version, jar cache, state dir)."""

    settings: Settings

    @property
    def libs(self) -> Path:
        return self.settings.kafka_home / self.settings.kafka_version / "libs"

    @property
    def home(self) -> Path:
        return (self.settings.state_dir / f"kafka-{self.settings.kafka_port}").resolve()

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    # --- fetch -------------------------------------------------------------
    def fetch(self) -> Path:
        """Copy the broker jars from Maven Central into the cache unless already there."""
        return fetch_jars(KAFKA_DIR / "pom.xml", self.libs, {"kafka.version": self.settings.kafka_version},
                          error=BrokerError)

    # --- lifecycle -----------------------------------------------------------
    def _properties(self) -> str:
        port = self.settings.kafka_port
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{port + 1}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.home / 'data'}",
            # Topics come from schemas.topics, never from a typo'd producer.
            "auto.create.topics.enable=false",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ])

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.settings.kafka_heap}", *self.settings.kafka_jvm_opts.split(), "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    def _format(self, config: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)),  # ids may start with "-"
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed: {proc.stdout}{proc.stderr}")

    def pid(self) -> int | None:
        """PID of the running broker, or None."""
        return pid_from_file(self.pid_file)

    def start(self, timeout_s: float = 90.0) -> int:
        """Start the broker unless it runs already; return its PID once it is ready."""
        if (pid := self.pid()) is not None:
            wait_for_cluster(self.settings.bootstrap, timeout_s)
            return pid
        if port_in_use(self.settings.kafka_port):
            raise BrokerError(f"port {self.settings.kafka_port} is taken by another process")
        self.fetch()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(self._properties())
        self._format(config)
        pid = spawn_server(self._java("kafka.Kafka", str(config)), self.log_file, self.pid_file)
        try:
            wait_for_cluster(self.settings.bootstrap, timeout_s)
        except BrokerError:
            self.stop()
            raise BrokerError(f"broker did not become ready; see {self.log_file}") from None
        log.info("Kafka broker %s ready at %s (pid %d)", self.settings.kafka_version,
                 self.settings.bootstrap, pid)
        return pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker by its PID (SIGTERM, then SIGKILL); True if one was running."""
        return stop_pid(self.pid_file, signal.SIGTERM, timeout_s)

    def status(self) -> str:
        pid = self.pid()
        return f"running (pid {pid}) at {self.settings.bootstrap}" if pid else "stopped"


@contextmanager
def kafka_running(settings: Settings, *, fresh: bool = False) -> Iterator[None]:
    """The embedded broker started (or the configured cluster reached) with the declared topics;
    an embedded broker is stopped on the way out. `fresh` starts from empty state: a new broker
    has empty changelogs, so the worker state under `state_dir` goes too."""
    broker = LocalBroker(settings) if settings.embedded_kafka else None
    if broker is None:
        wait_for_cluster(settings.bootstrap)
    else:
        if fresh:
            broker.stop()
            shutil.rmtree(settings.state_dir, ignore_errors=True)
        broker.start()
    try:
        ensure_topics(settings)
        yield
    finally:
        if broker is not None:
            broker.stop()
