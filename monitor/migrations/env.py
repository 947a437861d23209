"""Alembic's entry point: the app's metadata, and the connection or store URL to migrate.

``monitor.migrations.upgrade_engine`` passes an open connection. Run by hand (e.g. to
autogenerate a revision with ``alembic.command.revision(monitor.migrations.config(url),
autogenerate=True, message=...)``) the URL comes from ``sqlalchemy.url``, else from the
config file named by ``-x config=PATH`` or $SCHOOLWATCH_CONFIG.
"""
from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from monitor.migrations import metadata

target_metadata = metadata()


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render sqlmodel's types as plain SQLAlchemy ones, so revisions do not import sqlmodel."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, AutoString):
        return "sa.String()" if obj.impl.length is None else f"sa.String({obj.impl.length})"
    return False


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    path = context.get_x_argument(as_dictionary=True).get("config") or os.environ.get(
        "SCHOOLWATCH_CONFIG")
    if not path:
        raise SystemExit("no database: set sqlalchemy.url, -x config=PATH or $SCHOOLWATCH_CONFIG")
    from monitor.config import load_config

    return load_config(path).store.url


def _configure(**kwargs: Any) -> None:
    context.configure(target_metadata=target_metadata, render_item=render_item,
                      compare_type=True, **kwargs)


def run_offline() -> None:
    """Emit SQL for the URL's dialect instead of running it."""
    url = _url()
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection, or on a new one to the store URL."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    from monitor.store import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


def _migrate(connection: sa.Connection) -> None:
    # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
