"""The legacy bridge's Kafka Connect worker and its Debezium PostgreSQL connector.

`fetch` copies Kafka Connect (the broker's version) and Debezium's PostgreSQL connector from Maven
Central into a cache outside git, `start` spawns one distributed-mode worker on 127.0.0.1 (its
configs, offsets and statuses in Kafka topics, so a restarted or killed worker resumes from the
offsets it committed), `register` puts the connector's config through the REST API (idempotent:
PUT /connectors/<name>/config), `wait_running` blocks until its task streams, restarting a failed
task. The connector reads the queue table through pgoutput and Debezium's outbox EventRouter turns
each committed row into one record of `legacy-order-events` (docs/legacy.md).
"""
from __future__ import annotations

import json
import logging
import signal
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from psycopg.conninfo import conninfo_to_dict

from infra.maven import fetch_jars
from infra.processes import pid_alive, pid_from_file, port_in_use, spawn_server, stop_pid
from infra.settings import Settings
from schemas.topics import LEGACY_ORDER_EVENTS

__all__ = [
    "ConnectError", "LocalConnect", "QUEUE_TABLE", "connect_running", "connector_config", "connector_state",
    "register", "wait_running", "worker_properties",
]

log = logging.getLogger(__name__)
CONNECT_DIR = Path(__file__).parent / "connect"
QUEUE_TABLE = "public.order_events"
STRING_CONVERTER = "org.apache.kafka.connect.storage.StringConverter"


class ConnectError(RuntimeError):
    """Kafka Connect could not be fetched, started, reached, or its connector would not run."""


def worker_properties(settings: Settings, plugins: Path) -> str:
    """The distributed worker's config: one worker of group `connect_group_id` on 127.0.0.1."""
    group, rf, port = settings.connect_group_id, settings.replication_factor, settings.connect_rest_port
    return "\n".join([
        f"bootstrap.servers={settings.bootstrap}",
        f"group.id={group}",
        f"config.storage.topic={group}-configs",
        f"offset.storage.topic={group}-offsets",
        f"status.storage.topic={group}-status",
        # The worker creates its internal topics (compacted) with the broker's replication factor.
        f"config.storage.replication.factor={rf}",
        f"offset.storage.replication.factor={rf}",
        f"status.storage.replication.factor={rf}",
        "offset.storage.partitions=1",
        "status.storage.partitions=1",
        f"offset.flush.interval.ms={settings.connect_offset_flush_ms}",
        f"key.converter={STRING_CONVERTER}",
        f"value.converter={STRING_CONVERTER}",
        f"listeners=http://127.0.0.1:{port}",
        "rest.advertised.host.name=127.0.0.1",
        f"rest.advertised.port={port}",
        f"plugin.path={plugins}",
        "plugin.discovery=service_load",  # the plugins' service manifests: no classpath scan at boot
        # A killed worker's tasks go to whoever joins next at once, not after the default 5 minutes
        # a returning worker is waited for; a dead member leaves the group after 6 s.
        "scheduled.rebalance.max.delay.ms=0",
        "session.timeout.ms=6000",
        "heartbeat.interval.ms=2000",
        "",
    ])


def connector_config(settings: Settings, dsn: str) -> dict[str, str]:
    """The Debezium connector reading the queue table: one record per committed row, routed by the
    outbox EventRouter to `legacy-order-events` (key aggregateid, value payload as JSON text,
    headers row_id and event_type)."""
    db = conninfo_to_dict(dsn)
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": str(db.get("host", "127.0.0.1")),
        "database.port": str(db.get("port", "5432")),
        "database.user": str(db.get("user", "")),
        "database.password": str(db.get("password", "")),
        "database.dbname": str(db.get("dbname", "postgres")),
        "topic.prefix": settings.connect_connector,
        "plugin.name": "pgoutput",  # committed transactions only: a rolled-back row is never decoded
        "slot.name": settings.postgres_slot,
        "publication.name": settings.postgres_publication,
        "publication.autocreate.mode": "filtered",  # a publication FOR TABLE the queue table only
        "table.include.list": QUEUE_TABLE,
        "snapshot.mode": "initial",  # rows queued before the connector's first start are sent too
        "tombstones.on.delete": "false",
        "extended.headers.enabled": "false",  # no __debezium.context.* headers: id, row_id, event_type only  # the legacy jobs may purge sent rows: nothing to publish
        "key.converter": STRING_CONVERTER,
        "value.converter": STRING_CONVERTER,
        # Debezium waits this long for a full batch before handing rows over: the latency floor.
        "poll.interval.ms": str(settings.connect_poll_ms),
        # Losing PostgreSQL is retriable: Debezium reconnects after this wait, from its last offset.
        "errors.max.retries": "-1",
        "retriable.restart.connector.wait.ms": str(settings.connect_retry_wait_ms),
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": "id",
        "transforms.outbox.table.field.event.key": "aggregateid",
        "transforms.outbox.table.field.event.payload": "payload",
        "transforms.outbox.table.expand.json.payload": "false",  # the jsonb as JSON text
        "transforms.outbox.table.fields.additional.placement": "id:header:row_id,type:header:event_type",
        "transforms.outbox.route.by.field": "aggregatetype",
        "transforms.outbox.route.topic.replacement": LEGACY_ORDER_EVENTS.name,
    }


def _rest(settings: Settings, method: str, path: str, body: dict[str, Any] | None = None,
          timeout_s: float = 10.0) -> Any:
    """Call the worker's REST API; the decoded JSON answer (None when empty)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{settings.connect_url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise ConnectError(f"{method} {path}: {exc.code} {exc.read().decode()[:500]}") from exc
    except OSError as exc:
        raise ConnectError(f"{method} {path}: {exc}") from exc
    return json.loads(text) if text else None


def register(settings: Settings, dsn: str) -> None:
    """Create or update the connector (PUT of its config: the same config twice changes nothing)."""
    _rest(settings, "PUT", f"/connectors/{settings.connect_connector}/config", connector_config(settings, dsn))


def connector_state(settings: Settings) -> tuple[str, list[str]]:
    """The connector's state and each task's (RUNNING, FAILED, ...); ("MISSING", []) if unknown."""
    try:
        status = _rest(settings, "GET", f"/connectors/{settings.connect_connector}/status")
    except ConnectError as exc:
        if " 404 " in str(exc):
            return "MISSING", []
        raise
    return str(status["connector"]["state"]), [str(t["state"]) for t in status.get("tasks", [])]


def _restart_failed(settings: Settings) -> None:
    _rest(settings, "POST", f"/connectors/{settings.connect_connector}/restart?includeTasks=true&onlyFailed=true")


def wait_running(settings: Settings, timeout_s: float = 60.0) -> None:
    """Block until the connector and its task run; a FAILED connector or task is restarted (through
    REST) on the way, e.g. after PostgreSQL stayed away longer than Debezium's own retries."""
    deadline = time.monotonic() + timeout_s
    state: tuple[str, list[str]] = ("MISSING", [])
    while time.monotonic() < deadline:
        try:
            state = connector_state(settings)
        except ConnectError as exc:  # the worker is (re)joining its group: 409, or not listening yet
            state = (str(exc), [])
        else:
            if state[0] == "RUNNING" and state[1] and all(t == "RUNNING" for t in state[1]):
                return
            if state[0] == "FAILED" or "FAILED" in state[1]:
                log.warning("connector %s is %s; restarting what failed", settings.connect_connector, state)
                _restart_failed(settings)
        time.sleep(0.5)
    raise ConnectError(f"connector {settings.connect_connector} not running after {timeout_s:.0f}s: {state}")


@dataclass(frozen=True)
class LocalConnect:
    """The Connect worker described by settings (REST port, versions, jar cache, state dir)."""

    settings: Settings

    @property
    def cache(self) -> Path:
        s = self.settings
        return s.connect_home / f"{s.kafka_version}-debezium-{s.connect_debezium_version}"

    @property
    def libs(self) -> Path:
        return self.cache / "libs"

    @property
    def plugins(self) -> Path:
        return self.cache / "plugins"

    @property
    def home(self) -> Path:
        return (self.settings.state_dir / f"connect-{self.settings.connect_rest_port}").resolve()

    @property
    def pid_file(self) -> Path:
        return self.home / "connect.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "connect.log"

    def fetch(self) -> Path:
        """Copy the runtime jars (classpath) and Debezium's (a plugin folder of its own) unless cached."""
        pom, s = CONNECT_DIR / "pom.xml", self.settings
        fetch_jars(pom, self.libs, {"kafka.version": s.kafka_version}, profile="runtime", error=ConnectError)
        # The worker provides Kafka's and slf4j's classes to plugins: Debezium's copies stay out.
        fetch_jars(pom, self.plugins / "debezium-postgres", {"debezium.version": s.connect_debezium_version},
                   profile="debezium", exclude_groups=("org.apache.kafka", "org.slf4j"), error=ConnectError)
        return self.cache

    def _java(self, config: Path) -> list[str]:
        return [
            "java", f"-Xmx{self.settings.connect_heap}", *self.settings.connect_jvm_opts.split(),
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={CONNECT_DIR / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", "org.apache.kafka.connect.cli.ConnectDistributed", str(config),
        ]

    def pid(self) -> int | None:
        """PID of the running worker, or None."""
        return pid_from_file(self.pid_file)

    def _wait_rest(self, pid: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise ConnectError(f"Connect worker (pid {pid}) exited; see {self.log_file}")
            try:
                _rest(self.settings, "GET", "/connectors", timeout_s=2)
                return
            except ConnectError:
                time.sleep(0.3)
        raise ConnectError(f"Connect worker not answering after {timeout_s:.0f}s; see {self.log_file}")

    def start(self, timeout_s: float = 90.0) -> int:
        """Start the worker unless it runs already; return its PID once its REST API answers."""
        if (pid := self.pid()) is not None:
            self._wait_rest(pid, timeout_s)
            return pid
        if port_in_use(self.settings.connect_rest_port):
            raise ConnectError(f"port {self.settings.connect_rest_port} is taken by another process")
        self.fetch()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "worker.properties"
        config.write_text(worker_properties(self.settings, self.plugins))
        pid = spawn_server(self._java(config), self.log_file, self.pid_file)
        try:
            self._wait_rest(pid, timeout_s)
        except ConnectError:
            self.stop()
            raise
        log.info("Kafka Connect %s ready at %s (pid %d)", self.settings.kafka_version, self.settings.connect_url,
                 pid)
        return pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the worker by its PID (SIGTERM: it commits its offsets; SIGKILL after `timeout_s`)."""
        return stop_pid(self.pid_file, signal.SIGTERM, timeout_s)

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        try:
            state, tasks = connector_state(self.settings)
        except ConnectError as exc:
            return f"running (pid {pid}) at {self.settings.connect_url}; REST: {exc}"
        return f"running (pid {pid}) at {self.settings.connect_url}; {self.settings.connect_connector}: {state} {tasks}"


@contextmanager
def connect_running(settings: Settings, dsn: str, timeout_s: float = 120.0) -> Iterator[LocalConnect]:
    """The worker started with the connector registered and running; the worker stops on the way out.
    The broker (with the declared topics) and the queue table must exist already."""
    worker = LocalConnect(settings)
    worker.start(timeout_s)
    try:
        register(settings, dsn)
        wait_running(settings, timeout_s)
        yield worker
    finally:
        worker.stop()
