"""Evidence: hashed records of flagged mentions, page snapshots, screenshots, and packs.

Names are loaded on first use: monitor.config imports ``monitor.evidence.settings``, and the
rest of the package imports modules that import monitor.config.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EvidenceSettings": "settings",
    "EvidenceItem": "model", "RECORD": "model", "HTML": "model",
    "SCREENSHOT": "model",
    "build_record": "record", "capture_record": "record",
    "capture_page": "page",
    "EvidenceError": "pack", "export_pack": "pack", "manifest_sha256": "pack",
    "Problem": "verify", "VerifyReport": "verify", "verify_pack": "verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load an exported name from its submodule."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
