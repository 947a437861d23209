"""Canonical bytes, hashes and the two clocks every piece of evidence is stamped with."""
from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from monitor.store import as_utc

LOCAL_ZONE = "Europe/London"


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace: equal data, equal bytes."""
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def plain(value: Any) -> Any:
    """``value`` as JSON data only, so canonicalisation never fails inside the pipeline."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return str(value)


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, e.g. 2026-11-20T22:47:00Z."""
    moment = as_utc(value).astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def london_text(value: datetime) -> str:
    """Europe/London wall time with offset and zone, e.g. 2026-07-01T14:00:00+01:00 BST."""
    local = as_utc(value).astimezone(ZoneInfo(LOCAL_ZONE))
    return f"{local.isoformat()} {local.tzname()}"


def stamp(value: datetime | None) -> dict[str, str] | None:
    """The two clocks for one moment, as stored in records and manifests."""
    if value is None:
        return None
    return {"utc": iso_utc(value), "europe_london": london_text(value)}
