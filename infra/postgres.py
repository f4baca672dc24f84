"""A local PostgreSQL 15 on 127.0.0.1 for the legacy bridge, from Debian's `postgresql-15` package.

`start` runs initdb on first use and spawns `postgres` with logical decoding on, `wait_ready` blocks
until it accepts connections, `stop` ends it by PID (SIGINT: PostgreSQL's fast shutdown). State lives
under `state_dir/postgres`. initdb and postgres refuse to run as root: run as root, livetrack runs
them as the unprivileged `postgres_os_user` (the package's `postgres`), which owns the data folder.
`LIVETRACK_POSTGRES_DSN` names an existing server instead; then nothing is started.
"""
from __future__ import annotations

import logging
import os
import pwd
import secrets
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg.conninfo import make_conninfo

from infra.processes import pid_alive, pid_from_file, port_in_use, spawn_server, stop_pid
from infra.settings import Settings

__all__ = ["PostgresError", "LocalPostgres", "conninfo", "postgres_running", "wait_ready"]

log = logging.getLogger(__name__)
USER = "livetrack"  # the local server's superuser (Debezium reads the slot as it)
DATABASE = "postgres"


class PostgresError(RuntimeError):
    """The local PostgreSQL could not be set up, started or reached."""


def wait_ready(dsn: str, timeout_s: float = 30.0, pid: int | None = None) -> None:
    """Block until the server at `dsn` accepts a connection; fail early when process `pid` has died."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise PostgresError(f"PostgreSQL (pid {pid}) exited while starting")
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:  # refused, or "the database system is starting up"
            last = exc
        time.sleep(0.2)
    raise PostgresError(f"PostgreSQL not ready after {timeout_s:.0f}s ({last})")


@dataclass(frozen=True)
class LocalPostgres:
    """The local server described by settings (port, binaries, state dir)."""

    settings: Settings

    @property
    def home(self) -> Path:
        return (self.settings.state_dir / "postgres").resolve()

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "postgres.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    def password(self) -> str:
        """The configured password, else the development one kept in the state dir (made once, 0600)."""
        if configured := self.settings.postgres_password.get_secret_value():
            return configured
        if not self.password_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return self.password_file.read_text().strip()

    @property
    def dsn(self) -> str:
        return make_conninfo(host="127.0.0.1", port=self.settings.postgres_port, user=USER,
                             password=self.password(), dbname=DATABASE)

    # --- running as root -----------------------------------------------------
    def _server_user(self) -> pwd.struct_passwd | None:
        """The system user the server runs as, or None to run it as ourselves (we are not root)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self.settings.postgres_os_user)
        except KeyError:
            raise PostgresError(
                f"running as root needs the system user {self.settings.postgres_os_user!r} to run PostgreSQL "
                "(Debian's postgresql-15 package creates `postgres`)") from None

    def _as_server(self, cmd: list[str]) -> list[str]:
        """`cmd` run as the server user when we are root. CAP_DAC_READ_SEARCH (read and traverse only)
        lets it reach a state dir under a root-only folder (/root, pytest's 0700 temp dirs); it owns
        and writes only its own data folder."""
        user = self._server_user()
        if user is None:
            return cmd
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *cmd]

    def _own(self, path: Path) -> None:
        if (user := self._server_user()) is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    # --- lifecycle -----------------------------------------------------------
    def _initdb(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        initdb = self.settings.postgres_bin / "initdb"
        if not initdb.exists():
            raise PostgresError(f"{initdb} missing: install Debian's postgresql-15 (`make postgres`)")
        self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._own(self.data)
        pwfile = self.home / "initdb.pw"  # what initdb reads the password from, removed after
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password())
        try:
            proc = subprocess.run(self._as_server([
                str(initdb), "-D", str(self.data), f"--username={USER}", f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions",
            ]), capture_output=True, text=True)
        finally:
            pwfile.unlink()
        if proc.returncode != 0:
            raise PostgresError(f"initdb failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def _server_args(self) -> list[str]:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.settings.postgres_port),
            "unix_socket_directories": "",  # TCP on loopback only
            "wal_level": "logical",
            "max_replication_slots": "8",
            "max_wal_senders": "8",
            # A slot nobody reads keeps WAL; past this it is invalidated instead of filling the disk.
            "max_slot_wal_keep_size": "2GB",
            "max_connections": "50",
            "shared_buffers": "64MB",
        }
        server = str(self.settings.postgres_bin / "postgres")
        return self._as_server([server, "-D", str(self.data), *(f"-c{k}={v}" for k, v in options.items())])

    def pid(self) -> int | None:
        """PID of the running server, or None."""
        return pid_from_file(self.pid_file)

    def start(self, timeout_s: float = 60.0) -> int:
        """Start the server unless it runs already; return its PID once it accepts connections."""
        if (pid := self.pid()) is not None:
            wait_ready(self.dsn, timeout_s, pid)
            return pid
        if port_in_use(self.settings.postgres_port):
            raise PostgresError(f"port {self.settings.postgres_port} is taken by another process")
        self._initdb()
        pid = spawn_server(self._server_args(), self.log_file, self.pid_file)
        try:
            wait_ready(self.dsn, timeout_s, pid)
        except PostgresError:
            self.stop()
            raise PostgresError(f"PostgreSQL did not become ready; see {self.log_file}") from None
        log.info("PostgreSQL ready at 127.0.0.1:%d (pid %d)", self.settings.postgres_port, pid)
        return pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the server by its PID (SIGINT: fast shutdown, open transactions roll back; SIGKILL after
        `timeout_s`); True if one was running."""
        return stop_pid(self.pid_file, signal.SIGINT, timeout_s)

    def status(self) -> str:
        pid = self.pid()
        return f"running (pid {pid}) at 127.0.0.1:{self.settings.postgres_port}" if pid else "stopped"


def conninfo(settings: Settings) -> str:
    """The DSN of the legacy database: the configured server's, or the local one's."""
    return settings.postgres_dsn or LocalPostgres(settings).dsn


@contextmanager
def postgres_running(settings: Settings) -> Iterator[str]:
    """The local server started (or the configured one reached); yields its DSN. A local server is
    stopped on the way out."""
    server = LocalPostgres(settings) if settings.embedded_postgres else None
    if server is None:
        wait_ready(settings.postgres_dsn)
    else:
        server.start()
    try:
        yield conninfo(settings)
    finally:
        if server is not None:
            server.stop()
