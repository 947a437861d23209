"""Optional page capture: the HTML as served and a Chromium screenshot, outside the pipeline."""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlmodel import Session

from connectors.base import ConnectorError
from connectors.http import HttpClient
from monitor.evidence.canonical import sha256_hex
from monitor.evidence.chromium import ChromiumError, find_chromium, missing_reason, screenshot
from monitor.evidence.model import HTML, SCREENSHOT, EvidenceItem
from monitor.evidence.settings import EvidenceSettings
from monitor.store import MentionRow, utcnow

log = logging.getLogger(__name__)


def capture_page(engine: Engine, target: int | EvidenceItem, settings: EvidenceSettings,
                 client: HttpClient | None = None) -> list[EvidenceItem]:
    """Snapshot and screenshot a mention's page as configured; never raises (logs one line)."""
    mention_id = target.mention_id if isinstance(target, EvidenceItem) else target
    if not (settings.snapshot_html or settings.screenshot):
        return []
    try:
        return _capture(engine, mention_id, settings, client)
    except Exception as exc:  # evidence capture must never take the daemon down
        first_line = (str(exc).splitlines() or [""])[0][:300]
        log.warning("evidence: page capture for mention %s failed: %s: %s", mention_id,
                    type(exc).__name__, first_line)
        return []


def _refusal(url: str, settings: EvidenceSettings) -> str | None:
    """Why a URL must not be fetched, or None: only public http(s) addresses are."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    if settings.allow_private_addresses:
        return None
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (OSError, UnicodeError):
        return "host does not resolve"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            return f"{parts.hostname} is a private or local address"
    return None


def _capture(engine: Engine, mention_id: int, settings: EvidenceSettings,
             client: HttpClient | None) -> list[EvidenceItem]:
    with Session(engine) as session:
        mention = session.get(MentionRow, mention_id)
        if mention is None:
            log.warning("evidence: no mention %s to capture", mention_id)
            return []
        url, incident_id = mention.url, mention.incident_id
    base = {"mention_id": mention_id, "incident_id": incident_id, "source_url": url}
    refusal = _refusal(url, settings)
    items = []
    if settings.snapshot_html:
        items.append(_snapshot(url, settings, client, base) if refusal is None else
                     EvidenceItem(kind=HTML, note=f"{refusal}: no snapshot", **base))
    if settings.screenshot:
        items.append(_screenshot(url, settings, base) if refusal is None else
                     EvidenceItem(kind=SCREENSHOT, note=f"{refusal}: no screenshot", **base))
    with Session(engine) as session:
        session.add_all(items)
        session.commit()
        for item in items:
            session.refresh(item)
        session.expunge_all()
    captured = [i.kind for i in items if i.content is not None]
    log.info("evidence: mention %s page captured (%s)", mention_id,
             ", ".join(captured) or "nothing: see notes")
    return items


def _snapshot(url: str, settings: EvidenceSettings, client: HttpClient | None,
              base: dict[str, Any]) -> EvidenceItem:
    http = client or HttpClient(timeout=settings.timeout, max_bytes=settings.max_bytes)
    try:
        response = http.get(url)
    except ConnectorError as exc:
        return EvidenceItem(kind=HTML, captured_at=utcnow(), note=f"html snapshot failed: {exc}",
                            **base)
    finally:
        if client is None:
            http.close()
    note = None if response.url == url else f"redirected to {response.url}"
    return EvidenceItem(kind=HTML, sha256=sha256_hex(response.body), size=len(response.body),
                        media_type=response.header("Content-Type") or "text/html",
                        content=response.body, captured_at=utcnow(), note=note, **base)


def _screenshot(url: str, settings: EvidenceSettings, base: dict[str, Any]) -> EvidenceItem:
    binary = find_chromium(settings)
    if binary is None:
        return EvidenceItem(kind=SCREENSHOT, captured_at=utcnow(),
                            note=f"{missing_reason(settings)}: no screenshot", **base)
    try:
        png = screenshot(binary, url, settings.timeout)
    except ChromiumError as exc:
        return EvidenceItem(kind=SCREENSHOT, captured_at=utcnow(),
                            note=f"screenshot failed: {exc}", **base)
    return EvidenceItem(kind=SCREENSHOT, sha256=sha256_hex(png), size=len(png),
                        media_type="image/png", content=png, captured_at=utcnow(), **base)
