"""Schema migrations with Alembic, run from code: no alembic.ini is needed.

A database made by ``create_all`` before migrations existed has no ``alembic_version``
table; when its tables are those of the first release it is stamped at that revision.
"""
from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from monitor.store import make_engine

FIRST_RELEASE = "0001"
# Every module that defines a table: a table in none of them is missing from autogenerate.
MODEL_MODULES = ("monitor.store", "monitor.feedback", "monitor.evidence.model",
                 "monitor.coordination")
# An arbitrary constant: the PostgreSQL advisory lock two starting processes queue on.
_LOCK_KEY = 0x5C4001


log = logging.getLogger(__name__)


class SchemaError(RuntimeError):
    """The database holds tables this version cannot migrate."""


def config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for these migrations, for ``url`` or an open connection."""
    cfg = Config()
    cfg.set_main_option("script_location", "monitor:migrations")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def metadata() -> sa.MetaData:
    """The app's tables, every model module imported: what the newest revision must create."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return SQLModel.metadata


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision this version of Schoolwatch knows."""
    return _scripts().get_current_head() or ""


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at; None if it has never been migrated."""
    database = sa.make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:" \
            and not Path(database).exists():
        return None  # asking must not create the file
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return _current(connection)
    finally:
        engine.dispose()


def upgrade(url: str) -> str:
    """Upgrade the database at ``url`` to the newest revision; returns that revision."""
    engine = make_engine(url)
    try:
        upgrade_engine(engine)
    finally:
        engine.dispose()
    return head()


def upgrade_engine(engine: Engine) -> None:
    """Bring the database up to the newest revision, stamping pre-migration databases first."""
    with engine.connect() as connection:
        if _current(connection) == head():
            return
    with engine.connect() as connection:
        _begin_exclusive(connection)
        try:
            revision = _current(connection)
            if revision != head():
                if revision is None and _adopt_unversioned(connection):
                    command.stamp(config(connection=connection), FIRST_RELEASE)
                command.upgrade(config(connection=connection), "head")
                log.info("database schema upgraded from %s to %s", revision or "none", head())
            _check_foreign_keys(connection)
            connection.commit()
        finally:
            _end_exclusive(connection)


def _begin_exclusive(connection: Connection) -> None:
    """One transaction for the whole migration, which one process at a time runs."""
    if connection.dialect.name == "sqlite":
        # A batch migration rebuilds a table by dropping it: with foreign keys on, that would
        # cascade into the rows that refer to it. The switch only works outside a transaction.
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        # pysqlite runs DDL outside any transaction, so a daemon killed mid-migration would
        # leave half a schema: take over transaction control and hold the write lock.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")


def _check_foreign_keys(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise SchemaError(f"the migration would break foreign keys: {broken[:5]}")


def _end_exclusive(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.rollback()  # after a commit there is nothing left to roll back
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def _current(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None


def _adopt_unversioned(connection: Connection) -> bool:
    """True when the database has the first release's tables, made by ``create_all``."""
    first = _scripts().get_revision(FIRST_RELEASE).module
    frozen = first.schema()
    inspector = sa.inspect(connection)
    present = set(inspector.get_table_names()) & set(frozen.tables)
    if not present:
        return False
    for name in sorted(present):
        expected = {column.name for column in frozen.tables[name].columns}
        found = {column["name"] for column in inspector.get_columns(name)}
        if found != expected:
            raise SchemaError(
                f"table {name} does not match Schoolwatch's first released schema "
                f"(missing {sorted(expected - found)}, unknown {sorted(found - expected)}); "
                "it cannot be migrated automatically")
    if connection.dialect.name == "postgresql":
        _aware_timestamps(connection, frozen, present)
    # The old start-up created whatever tables were missing and the triggers: do the same.
    frozen.create_all(connection, tables=[frozen.tables[name] for name in
                                          sorted(set(frozen.tables) - present)])
    first.make_append_only(connection)
    return True


def _aware_timestamps(connection: Connection, frozen: sa.MetaData, present: set[str]) -> None:
    """Make ``timestamp`` columns ``timestamptz``, as sqlmodel before 0.0.45 left them naive."""
    inspector = sa.inspect(connection)
    for name in sorted(present):
        types = {column["name"]: column["type"] for column in inspector.get_columns(name)}
        for column in frozen.tables[name].columns:
            found = types[column.name]
            if isinstance(column.type, sa.DateTime) and isinstance(found, sa.DateTime) \
                    and column.type.timezone and not found.timezone:
                # The naive values were written as the server's local time: read them so.
                connection.exec_driver_sql(
                    f'ALTER TABLE "{name}" ALTER COLUMN "{column.name}" TYPE timestamptz '
                    f"USING \"{column.name}\" AT TIME ZONE current_setting('TimeZone')")
