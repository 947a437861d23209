"""The ``[evidence]`` config table: optional page snapshots and screenshots."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from connectors.http import DEFAULT_MAX_BYTES


class EvidenceSettings(BaseModel):
    """What is captured beyond the record of each flagged mention."""

    # Own base class: monitor.config will import this module, so it cannot import config.
    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot_html: bool = False
    screenshot: bool = False
    # Path to a Chromium binary; None looks for chromium, chromium-browser, google-chrome on PATH.
    chromium: str | None = None
    timeout: float = Field(30.0, gt=0, le=600)
    # Post links are written by strangers: never fetch the school's own network from them.
    allow_private_addresses: bool = False
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, le=200 * 1024 * 1024)
