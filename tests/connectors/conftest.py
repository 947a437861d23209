"""Fixtures shared by the connector tests: the fictional school."""
from __future__ import annotations

import pytest

from connectors.base import SchoolContext


@pytest.fixture
def school() -> SchoolContext:
    """Harrowgate High School, as the config would describe it."""
    return SchoolContext(
        id="harrowgate", name="Harrowgate High School",
        aliases=("Harrowgate High", "HHS"), handles=("@HarrowgateHigh",),
        exclusions=("Harrowgate High Street",),
    )
