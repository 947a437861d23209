"""Shared fixtures: real local HTTP and SMTP servers, and a fresh database per test."""
from __future__ import annotations

import pytest

from monitor.store import init_db, make_engine
from tests.support.database import database_url, drop_databases
from tests.support.http_server import RecordedServer
from tests.support.smtp_server import SmtpServer


@pytest.fixture(autouse=True)
def _fresh_databases():
    """Drop the PostgreSQL databases a test created (SQLite files go with tmp_path)."""
    yield
    drop_databases()


@pytest.fixture
def engine(tmp_path):
    """This test's store, migrated to the current schema."""
    engine = make_engine(database_url(tmp_path))
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 serving recorded replies."""
    server = RecordedServer().start()
    yield server
    server.stop()


@pytest.fixture
def other_server():
    """A second real HTTP server, for sources that poll more than one host."""
    server = RecordedServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 with STARTTLS and AUTH."""
    server = SmtpServer().start()
    yield server
    server.stop()
