"""The test database: a SQLite file per test, or with $SCHOOLWATCH_TEST_DB a fresh PostgreSQL one.

SCHOOLWATCH_TEST_DB names a server (e.g. postgresql+psycopg://postgres@127.0.0.1:5433/postgres);
each test gets its own database on it, created on first use and dropped after the test.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

ENV = "SCHOOLWATCH_TEST_DB"

_created: dict[tuple[str, str], str] = {}
_admin: Engine | None = None


def server_url() -> str | None:
    """The PostgreSQL server the suite runs against, or None for SQLite."""
    return os.environ.get(ENV) or None


def backend() -> str:
    """``postgresql`` or ``sqlite``."""
    url = server_url()
    return make_url(url).get_backend_name() if url else "sqlite"


requires_postgres = pytest.mark.skipif(
    backend() != "postgresql", reason=f"needs PostgreSQL: set {ENV} to a server URL")


def sqlite_only(why: str) -> pytest.MarkDecorator:
    """Skip a test of a SQLite mechanism when the suite runs on another database, saying why."""
    return pytest.mark.skipif(backend() != "sqlite", reason=f"SQLite only: {why}")


def database_url(directory: Path, name: str = "schoolwatch") -> str:
    """The URL of this test's database ``name``: the same URL each time it is asked for."""
    server = server_url()
    if server is None:
        return f"sqlite:///{directory / f'{name}.db'}"
    key = (str(directory), name)
    if key not in _created:
        database = f"sw_{uuid.uuid4().hex[:16]}"
        with _admin_engine().connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{database}"')
        _created[key] = make_url(server).set(database=database).render_as_string(
            hide_password=False)
    return _created[key]


def rows(url: str, sql: str) -> list[sa.Row]:
    """What ``sql`` returns, on a connection of its own; nothing while the tables are missing."""
    sqlite = url.startswith("sqlite")
    if sqlite and not Path(make_url(url).database or "").exists():
        return []
    engine = sa.create_engine(url, poolclass=sa.NullPool,
                              connect_args={"timeout": 30} if sqlite else {})
    try:
        with engine.connect() as connection:
            return list(connection.exec_driver_sql(sql))
    except sa.exc.DBAPIError as exc:
        if "no such table" in str(exc.orig) or "does not exist" in str(exc.orig):
            return []
        raise
    finally:
        engine.dispose()


def drop_databases() -> None:
    """Drop every database this test created; connections still open to them are ended."""
    if not _created:
        return
    names = [make_url(url).database for url in _created.values()]
    _created.clear()
    with _admin_engine().connect() as connection:
        for database in names:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _admin_engine() -> Engine:
    global _admin
    if _admin is None:
        url = make_url(server_url() or "")
        if url.get_backend_name() != "postgresql":
            raise RuntimeError(f"{ENV} must be a postgresql URL, not {url.get_backend_name()}")
        # CREATE and DROP DATABASE cannot run inside a transaction.
        _admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    return _admin
