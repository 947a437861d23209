"""Triage: the states an incident moves through, each move recorded in the audit log."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from monitor.feedback import record_false_positive
from monitor.store import (
    AssessmentRow,
    AuditEntry,
    Incident,
    MentionRow,
    OutboxMessage,
    audit,
)

OPEN, ACKNOWLEDGED, RESOLVED, FALSE_POSITIVE = "open", "acknowledged", "resolved", "false_positive"
STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED, FALSE_POSITIVE)

# action -> (states it may start from, state it leads to; None keeps the state)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "ack": ((OPEN,), ACKNOWLEDGED),
    "resolve": ((OPEN, ACKNOWLEDGED), RESOLVED),
    "false-positive": ((OPEN, ACKNOWLEDGED), FALSE_POSITIVE),
    "reopen": ((RESOLVED, FALSE_POSITIVE, ACKNOWLEDGED), OPEN),
    "note": (STATUSES, None),
}


class TriageError(Exception):
    """The action cannot be taken (unknown incident, or not from its current state)."""


@dataclass(frozen=True)
class IncidentDetail:
    """An incident with its mentions, verdicts, messages and audit trail."""

    incident: Incident
    mentions: list[tuple[MentionRow, AssessmentRow | None]]
    messages: list[OutboxMessage]
    audit: list[AuditEntry]


def apply(engine: Engine, incident_id: int, action: str, actor: str,
          note: str | None = None, now: datetime | None = None) -> Incident:
    """Take a triage action on an incident and audit it, in one transaction."""
    if action not in TRANSITIONS:
        raise TriageError(f"unknown action {action!r}; known: {', '.join(TRANSITIONS)}")
    if not actor.strip():
        raise TriageError("say who is acting (--by NAME): the audit log records it")
    with Session(engine) as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise TriageError(f"no incident #{incident_id}")
        transition(session, incident, action, actor.strip(), note, now)
        session.commit()
        session.refresh(incident)
        session.expunge(incident)
        return incident


def transition(session: Session, incident: Incident, action: str, actor: str,
               note: str | None = None, now: datetime | None = None) -> None:
    """Take ``action`` on ``incident`` and audit it, in the caller's transaction."""
    allowed_from, target = TRANSITIONS[action]
    if incident.status not in allowed_from:
        raise TriageError(f"incident #{incident.id} is {incident.status}; "
                          f"{action} needs {' or '.join(allowed_from)}")
    before = incident.status
    if action == "false-positive":
        record_false_positive(session, incident, actor)
    if target is not None:
        incident.status = target
        session.add(incident)
    audit(session, actor, f"incident.{action}", "incident", incident.id,
          at=now, **{"from": before, "to": incident.status, **({"note": note} if note else {})})


def list_incidents(engine: Engine, school: str | None = None, category: str | None = None,
                   status: str | None = None, since: datetime | None = None,
                   limit: int = 200) -> list[Incident]:
    """Incidents, newest activity first, filtered."""
    query = select(Incident)
    if school:
        query = query.where(Incident.school_id == school)
    if category:
        query = query.where(Incident.category == category)
    if status:
        query = query.where(Incident.status == status)
    if since:
        query = query.where(Incident.last_seen >= since)
    with Session(engine) as session:
        rows = session.exec(query.order_by(col(Incident.last_seen).desc()).limit(limit)).all()
        session.expunge_all()
        return list(rows)


def detail(engine: Engine, incident_id: int) -> IncidentDetail:
    """Everything stored about one incident."""
    with Session(engine) as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            raise TriageError(f"no incident #{incident_id}")
        mentions = session.exec(
            select(MentionRow, AssessmentRow)
            .join(AssessmentRow, AssessmentRow.mention_id == MentionRow.id, isouter=True)
            .where(MentionRow.incident_id == incident_id)
            .order_by(MentionRow.published_at)
        ).all()
        messages = session.exec(select(OutboxMessage).where(
            OutboxMessage.incident_id == incident_id).order_by(OutboxMessage.id)).all()
        trail = session.exec(select(AuditEntry).where(
            AuditEntry.object_type == "incident", AuditEntry.object_id == str(incident_id))
            .order_by(AuditEntry.id)).all()
        session.expunge_all()
        return IncidentDetail(incident, [tuple(m) for m in mentions], list(messages), list(trail))


def acknowledged(engine: Engine, incident_id: int) -> bool:
    """True once someone has acknowledged (or closed) the incident."""
    with Session(engine) as session:
        incident = session.get(Incident, incident_id)
        return incident is not None and incident.status != OPEN
