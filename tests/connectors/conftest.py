"""Fixtures shared by the connector tests: the fictional school and a second server."""
from __future__ import annotations

import pytest

from connectors.base import SchoolContext
from tests.support.http_server import RecordedServer


@pytest.fixture
def school() -> SchoolContext:
    """Harrowgate High School, as the config would describe it."""
    return SchoolContext(
        id="harrowgate", name="Harrowgate High School",
        aliases=("Harrowgate High", "HHS"), handles=("@HarrowgateHigh",),
        exclusions=("Harrowgate High Street",),
    )


@pytest.fixture
def other_server():
    """A second real HTTP server, for sources that poll more than one host."""
    server = RecordedServer().start()
    yield server
    server.stop()
