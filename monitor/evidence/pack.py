"""The evidence pack: a zip of every item, a manifest of their hashes, and a report."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from monitor import __version__
from monitor.evidence.canonical import canonical_json, sha256_hex, stamp
from monitor.evidence.chromium import ChromiumError, find_chromium, missing_reason, print_pdf
from monitor.evidence.model import RECORD, EvidenceItem
from monitor.evidence.report import ItemView, MentionView, ReportView, render_report
from monitor.evidence.settings import EvidenceSettings
from monitor.store import (
    AssessmentRow,
    AuditEntry,
    Incident,
    MentionRow,
    OutboxMessage,
    as_utc,
    audit,
    utcnow,
)

log = logging.getLogger(__name__)

PACK_FORMAT = "schoolwatch.evidence.pack/1"
MANIFEST = "manifest.json"
REPORT_HTML, REPORT_PDF = "report.html", "report.pdf"
EXTENSIONS = {"record": ".json", "raw": ".json", "html": ".html", "screenshot": ".png"}
# A "page" may be an image or a PDF when the post links straight to one.
MEDIA_EXTENSIONS = {"text/html": ".html", "application/xhtml+xml": ".html", "text/plain": ".txt",
                    "application/json": ".json", "application/pdf": ".pdf", "image/png": ".png",
                    "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}


class EvidenceError(Exception):
    """The pack cannot be made (unknown incident, no actor)."""


@dataclass(frozen=True)
class _Entry:
    """One file to write into the zip, and its manifest line."""

    path: str
    data: bytes
    meta: dict[str, Any]


@dataclass(frozen=True)
class _Loaded:
    incident: Incident
    mentions: list[tuple[MentionRow, AssessmentRow | None]]
    items: list[EvidenceItem]
    audit: list[AuditEntry]
    messages: list[OutboxMessage]


def export_pack(engine: Engine, incident_id: int, out_path: str | Path, actor: str,
                settings: EvidenceSettings | None = None, school_name: str | None = None,
                now: datetime | None = None) -> Path:
    """Write the incident's evidence pack to ``out_path`` and audit the export."""
    if not actor or not actor.strip():
        raise EvidenceError("say who is exporting (--by NAME): the audit log records it")
    actor, settings = actor.strip(), settings or EvidenceSettings()
    out_path = Path(out_path)
    exported_at = as_utc(now) or utcnow()
    loaded = _load(engine, incident_id)
    entries, views, notes = _item_entries(loaded)
    report = render_report(ReportView(
        incident=loaded.incident, school_name=school_name or loaded.incident.school_id,
        exported_at=exported_at, exported_by=actor, version=__version__, mentions=views,
        audit=loaded.audit, messages=loaded.messages,
    )).encode("utf-8")
    entries.append(_derived(REPORT_HTML, report, "report", "text/html; charset=utf-8"))
    pdf, pdf_status = _render_pdf(report, settings)
    if pdf is not None:
        entries.append(_derived(REPORT_PDF, pdf, "report", "application/pdf"))
    manifest = {
        "format": PACK_FORMAT,
        "schoolwatch_version": __version__,
        "incident_id": incident_id,
        "school_id": loaded.incident.school_id,
        "exported_at": stamp(exported_at),
        "exported_by": actor,
        "items": [e.meta for e in entries],
        "notes": notes,
        "mentions_without_record": [v.mention.id for v in views if not v.recorded],
        "report_pdf": pdf_status,
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    digest = sha256_hex(manifest_bytes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=".evidence-", suffix=".zip", dir=out_path.parent)
    os.close(fd)
    try:
        _write_zip(Path(temp_name), entries, manifest_bytes, exported_at)
        with Session(engine) as session:
            audit(session, actor, "evidence.export", "incident", incident_id,
                  manifest_sha256=digest, file=out_path.name, items=len(entries))
            session.commit()
        os.replace(temp_name, out_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    log.info("evidence: incident %s exported by %s to %s (%d items, manifest sha256 %s)",
             incident_id, actor, out_path, len(entries), digest)
    return out_path


def manifest_sha256(path: str | Path) -> str:
    """The SHA-256 of a pack's manifest.json, as recorded in the audit log at export."""
    with zipfile.ZipFile(path) as archive:
        return sha256_hex(archive.read(MANIFEST))


def _load(engine: Engine, incident_id: int) -> _Loaded:
    with Session(engine) as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise EvidenceError(f"no incident #{incident_id}")
        mentions = [tuple(row) for row in session.exec(
            select(MentionRow, AssessmentRow)
            .join(AssessmentRow, AssessmentRow.mention_id == MentionRow.id, isouter=True)
            .where(MentionRow.incident_id == incident_id)
            .order_by(MentionRow.published_at, MentionRow.id))]
        mention_ids = [m.id for m, _ in mentions]
        items = session.exec(select(EvidenceItem)
                             .where(col(EvidenceItem.mention_id).in_(mention_ids))
                             .order_by(EvidenceItem.mention_id, EvidenceItem.id)).all()
        trail = session.exec(select(AuditEntry).where(
            AuditEntry.object_type == "incident", AuditEntry.object_id == str(incident_id))
            .order_by(AuditEntry.at, AuditEntry.id)).all()
        messages = session.exec(select(OutboxMessage).where(
            OutboxMessage.incident_id == incident_id).order_by(OutboxMessage.id)).all()
        session.expunge_all()
    return _Loaded(incident, mentions, list(items), list(trail), list(messages))


def _item_entries(loaded: _Loaded) -> tuple[list[_Entry], list[MentionView], list[dict[str, Any]]]:
    entries: list[_Entry] = []
    notes: list[dict[str, Any]] = []
    by_mention: dict[int, list[ItemView]] = {}
    for item in loaded.items:
        captured_at = as_utc(item.captured_at)
        views = by_mention.setdefault(item.mention_id, [])
        if item.content is None:
            notes.append({"kind": item.kind, "mention_id": item.mention_id, "evidence_id": item.id,
                          "captured_at": stamp(captured_at), "note": item.note})
            views.append(ItemView(item.kind, None, None, 0, captured_at, item.source_url, item.note))
            continue
        path = f"items/mention-{item.mention_id}/{item.kind}-{item.id}{_extension(item)}"
        if sha256_hex(item.content) != item.sha256:
            # Listed with the hash taken at capture, so verify names the altered item.
            log.warning("evidence: item %s no longer matches the hash taken at capture", item.id)
        meta = {"path": path, "sha256": item.sha256, "size": item.size, "kind": item.kind,
                "media_type": item.media_type, "mention_id": item.mention_id,
                "evidence_id": item.id, "captured_at": stamp(captured_at),
                "source_url": item.source_url, "note": item.note}
        entries.append(_Entry(path, item.content, meta))
        views.append(ItemView(item.kind, path, item.sha256, item.size, captured_at,
                              item.source_url, item.note))
        if item.kind == RECORD:
            raw = _raw_entry(item, path, captured_at)
            if raw is not None:
                entries.append(raw)
                views.append(ItemView("raw", raw.path, raw.meta["sha256"], len(raw.data),
                                      captured_at, item.source_url, raw.meta["note"]))
    mentions = [MentionView(m, a, by_mention.get(m.id, [])) for m, a in loaded.mentions]
    return entries, mentions, notes


def _extension(item: EvidenceItem) -> str:
    if item.kind == "html":
        media = (item.media_type or "").split(";")[0].strip().lower()
        return MEDIA_EXTENSIONS.get(media, ".bin")
    return EXTENSIONS.get(item.kind, ".bin")


def _raw_entry(item: EvidenceItem, record_path: str, captured_at: datetime) -> _Entry | None:
    """The platform payload on its own, cut from the record (which its hash already covers)."""
    try:
        raw = json.loads(item.content or b"").get("raw")
    except (ValueError, AttributeError):
        return None
    if raw is None:
        return None
    data = canonical_json(raw)
    path = f"items/mention-{item.mention_id}/raw-{item.id}.json"
    return _Entry(path, data, {
        "path": path, "sha256": sha256_hex(data), "size": len(data), "kind": "raw",
        "media_type": "application/json", "mention_id": item.mention_id, "evidence_id": item.id,
        "captured_at": stamp(captured_at), "source_url": item.source_url,
        "note": f"platform payload from {record_path}"})


def _derived(path: str, data: bytes, kind: str, media_type: str) -> _Entry:
    return _Entry(path, data, {"path": path, "sha256": sha256_hex(data), "size": len(data),
                               "kind": kind, "media_type": media_type, "mention_id": None,
                               "evidence_id": None, "captured_at": None, "source_url": None,
                               "note": None})


def _render_pdf(report: bytes, settings: EvidenceSettings) -> tuple[bytes | None, str]:
    binary = find_chromium(settings)
    if binary is None:
        return None, f"not rendered: {missing_reason(settings)}"
    with tempfile.TemporaryDirectory(prefix="schoolwatch-report-") as work:
        html = Path(work) / REPORT_HTML
        html.write_bytes(report)
        try:
            return print_pdf(binary, html, settings.timeout), "rendered with headless chromium"
        except ChromiumError as exc:
            log.warning("evidence: report PDF not rendered: %s", exc)
            return None, f"not rendered: {exc}"


def _write_zip(path: Path, entries: list[_Entry], manifest: bytes, when: datetime) -> None:
    stamp_tuple = as_utc(when).timetuple()[:6]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in [(MANIFEST, manifest), *((e.path, e.data) for e in entries)]:
            info = zipfile.ZipInfo(name, date_time=stamp_tuple)
            info.external_attr = 0o644 << 16
            # PNGs and PDFs are compressed already.
            info.compress_type = (zipfile.ZIP_STORED if name.endswith((".png", ".pdf"))
                                  else zipfile.ZIP_DEFLATED)
            archive.writestr(info, data)

