"""infra.postgres: how the local server is run (as whom, with which options) and which DSN is used."""
from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from infra.postgres import LocalPostgres, PostgresError, conninfo
from infra.settings import Settings


def _server(tmp_path: Path, **overrides: Any) -> LocalPostgres:
    return LocalPostgres(Settings(state_dir=tmp_path, postgres_port=25999, **overrides))


def test_not_root_runs_the_server_as_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    args = _server(tmp_path)._server_args()
    assert args[0] == "/usr/lib/postgresql/15/bin/postgres"
    assert {"-clisten_addresses=127.0.0.1", "-cport=25999", "-cwal_level=logical", "-cunix_socket_directories="} <= set(args)


def test_root_runs_the_server_as_the_system_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    user = pwd.struct_passwd(("pg", "x", 101, 104, "", "/", "/bin/sh"))
    monkeypatch.setattr("pwd.getpwnam", lambda name: user)
    args = _server(tmp_path)._server_args()
    assert args[:4] == ["setpriv", "--reuid=101", "--regid=104", "--init-groups"]
    assert args[6] == "/usr/lib/postgresql/15/bin/postgres"


def test_root_without_the_system_user_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    with pytest.raises(PostgresError, match="postgresql-15"):
        _server(tmp_path, postgres_os_user="no-such-user-here")._server_args()


def test_dev_password_is_made_once_and_private(tmp_path: Path) -> None:
    server = _server(tmp_path)
    first = server.password()
    assert first == server.password() and len(first) >= 24
    assert server.password_file.stat().st_mode & 0o777 == 0o600
    assert conninfo_to_dict(server.dsn) == {
        "host": "127.0.0.1", "port": "25999", "user": "livetrack", "password": first, "dbname": "postgres"}


def test_configured_password_and_existing_server(tmp_path: Path) -> None:
    assert conninfo_to_dict(_server(tmp_path, postgres_password="s3cret").dsn)["password"] == "s3cret"
    assert not (tmp_path / "postgres" / "password").exists()
    dsn = "host=db.internal port=5432 dbname=legacy user=bridge"
    assert conninfo(Settings(state_dir=tmp_path, postgres_dsn=dsn)) == dsn


def test_slot_names_follow_postgres_rules() -> None:
    with pytest.raises(ValueError, match="slot"):
        Settings(postgres_slot="Bad-Name")
