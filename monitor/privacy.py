"""Data-subject requests: find, export and erase what is stored about one person."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, or_
from sqlmodel import Session, col, select

from monitor.feedback import FeedbackExample
from monitor.retention import delete_mentions
from monitor.store import AssessmentRow, Incident, MentionRow, OutboxMessage, audit, utcnow
from monitor.textnorm import fold


@dataclass
class SubjectItems:
    """Everything found about a subject, split by whether a legal hold protects it."""

    mentions: list[MentionRow] = field(default_factory=list)
    held: list[MentionRow] = field(default_factory=list)
    messages: list[OutboxMessage] = field(default_factory=list)
    feedback: list[FeedbackExample] = field(default_factory=list)


def find_subject(session: Session, subject: str) -> SubjectItems:
    """Mentions by or naming ``subject`` (a handle or a name), and messages quoting them."""
    needle = fold(subject).lstrip("@").strip()
    if len(needle) < 3:
        raise ValueError("give at least 3 characters of a name or handle")
    # Case-insensitive in SQL, then confirmed in Python with the same folding as elsewhere.
    # autoescape: a "_" or "%" in a handle is a character, not a LIKE wildcard matching others.
    def pattern(column: Any) -> Any:
        return func.lower(column).contains(needle, autoescape=True)

    candidates = session.exec(select(MentionRow).where(or_(
        pattern(MentionRow.author), pattern(MentionRow.text), pattern(MentionRow.title)))).all()
    found = SubjectItems()
    holds = set(session.exec(select(Incident.id).where(col(Incident.legal_hold).is_(True))).all())
    for mention in candidates:
        haystack = fold(" ".join(filter(None, (mention.author, mention.title, mention.text))))
        if needle not in haystack:
            continue
        (found.held if mention.incident_id in holds else found.mentions).append(mention)
    found.messages = list(session.exec(select(OutboxMessage).where(
        pattern(OutboxMessage.body_text))).all())
    found.feedback = list(session.exec(select(FeedbackExample).where(
        pattern(FeedbackExample.text))).all())
    return found


def export_subject(engine: Engine, subject: str, out: Path, actor: str) -> Counter[str]:
    """Write every stored item about ``subject`` to a JSON file; audited (by hash, not name)."""
    with Session(engine) as session:
        found = find_subject(session, subject)
        verdicts = {a.mention_id: a for a in session.exec(select(AssessmentRow).where(
            col(AssessmentRow.mention_id).in_([m.id for m in found.mentions + found.held])))}
        document = {
            "subject": subject, "exported_at": utcnow().isoformat(), "exported_by": actor,
            "mentions": [_mention_json(m, verdicts.get(m.id), held=m in found.held)
                         for m in found.mentions + found.held],
            "messages": [{"id": m.id, "to": m.recipient, "subject": m.subject, "status": m.status,
                          "created_at": m.created_at.isoformat(), "body": m.body_text}
                         for m in found.messages],
            "feedback_examples": [{"id": f.id, "text": f.text, "label": f.label,
                                   "given_by": f.given_by} for f in found.feedback],
        }
        out.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str),
                       encoding="utf-8")
        counts = Counter(mentions=len(found.mentions) + len(found.held),
                         messages=len(found.messages), feedback_examples=len(found.feedback))
        audit(session, actor, "privacy.export", "subject", _subject_ref(subject), **counts)
        session.commit()
    return counts


def erase_subject(engine: Engine, subject: str, actor: str) -> tuple[Counter[str], list[int]]:
    """Erase what is stored about ``subject``; returns counts and the held incidents refused."""
    with Session(engine) as session:
        found = find_subject(session, subject)
        counts: Counter[str] = Counter()
        counts["mentions"] = delete_mentions(session, [m.id for m in found.mentions])
        for message in found.messages:
            if message.status == "sent":
                session.delete(message)
                counts["sent_messages"] += 1
            else:
                counts["pending_messages_kept"] += 1
        for example in found.feedback:
            session.delete(example)
            counts["feedback_examples"] += 1
        refused = sorted({m.incident_id for m in found.held if m.incident_id is not None})
        counts["mentions_refused_legal_hold"] = len(found.held)
        audit(session, actor, "privacy.erase", "subject", _subject_ref(subject),
              refused_incidents=refused, **counts)
        session.commit()
    return counts, refused


def set_legal_hold(engine: Engine, incident_id: int, actor: str, hold: bool,
                   reason: str | None = None) -> Incident:
    """Place or lift a legal hold on an incident; audited."""
    with Session(engine) as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise LookupError(f"no incident #{incident_id}")
        incident.legal_hold, incident.legal_hold_reason = hold, reason if hold else None
        session.add(incident)
        audit(session, actor, "incident.hold" if hold else "incident.release", "incident",
              incident_id, reason=reason)
        session.commit()
        session.refresh(incident)
        session.expunge(incident)
        return incident


def _subject_ref(subject: str) -> str:
    """The audit log records a hash of the subject, so an erasure does not keep the name."""
    return "sha256:" + hashlib.sha256(fold(subject).strip().encode()).hexdigest()[:16]


def _mention_json(mention: MentionRow, verdict: AssessmentRow | None, held: bool) -> dict[str, Any]:
    return {
        "id": mention.id, "platform": mention.platform, "external_id": mention.external_id,
        "url": mention.url, "author": mention.author, "title": mention.title, "text": mention.text,
        "published_at": mention.published_at.isoformat(), "fetched_at": mention.fetched_at.isoformat(),
        "incident_id": mention.incident_id, "under_legal_hold": held, "raw": mention.raw,
        "classification": None if verdict is None else {
            "category": verdict.category, "severity": verdict.severity,
            "subtype": verdict.subtype, "reasons": verdict.reasons},
    }
