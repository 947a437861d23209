"""The canonical record of a mention, captured inside the transaction that stores it."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from monitor.evidence.canonical import canonical_json, sha256_hex, stamp
from monitor.evidence.model import RECORD, EvidenceItem
from monitor.store import AssessmentRow, MentionRow, as_utc, utcnow

RECORD_FORMAT = "schoolwatch.evidence.record/1"


def build_record(mention: MentionRow, assessment: AssessmentRow | None,
                 captured_at: datetime) -> dict[str, Any]:
    """Everything known about a mention at capture time, as plain data."""
    return {
        "format": RECORD_FORMAT,
        "captured_at": stamp(captured_at),
        "incident_id": mention.incident_id,
        "mention": {
            "id": mention.id,
            "platform": mention.platform,
            "external_id": mention.external_id,
            "source_id": mention.source_id,
            "school_id": mention.school_id,
            "url": mention.url,
            "canonical_url": mention.canonical_url,
            "author": mention.author,
            "title": mention.title,
            "text": mention.text,
            "text_sha256": sha256_hex(mention.text.encode("utf-8")),
            "posted_at": stamp(mention.published_at),
            "fetched_at": stamp(mention.fetched_at),
        },
        "assessment": None if assessment is None else {
            "classifier": assessment.classifier,
            "category": assessment.category,
            "severity": assessment.severity,
            "subtype": assessment.subtype,
            "scores": assessment.scores,
            "reasons": assessment.reasons,
            "assessed_at": stamp(assessment.created_at),
        },
        # The platform's own payload; None when the mention was not flagged (it is not kept).
        "raw": mention.raw,
    }


def capture_record(session: Session, mention: MentionRow, assessment: AssessmentRow | None,
                   captured_at: datetime | None = None) -> EvidenceItem:
    """Add the mention's hashed canonical record to ``session``; the caller commits."""
    if mention.id is None:
        session.flush()
    captured_at = as_utc(captured_at) or utcnow()
    content = canonical_json(build_record(mention, assessment, captured_at))
    item = EvidenceItem(
        mention_id=mention.id, incident_id=mention.incident_id, kind=RECORD,
        sha256=sha256_hex(content), size=len(content), media_type="application/json",
        content=content, source_url=mention.url, captured_at=captured_at,
        note=None if mention.raw is not None else "no platform payload: kept for flagged mentions only",
    )
    session.add(item)
    return item
