"""Escalation: a high-severity safeguarding incident nobody acknowledged goes further up."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from monitor.config import Settings
from monitor.outbox import queue_incident_alert
from monitor.routing import role_deliveries
from monitor.store import AssessmentRow, Incident, MentionRow, as_utc, audit

log = logging.getLogger(__name__)


def escalate_due(engine: Engine, settings: Settings, now: datetime) -> int:
    """Queue the next escalation step for every overdue incident; returns how many stepped."""
    alerting = settings.alerting
    steps = alerting.escalation_roles
    if not steps:
        return 0
    stepped = 0
    with Session(engine) as session:
        candidates = session.exec(select(Incident).where(
            Incident.category == "safeguarding", Incident.severity == "high",
            Incident.status == "open", Incident.escalation_level < len(steps))).all()
        for incident in candidates:
            due = as_utc(incident.first_seen) + timedelta(
                seconds=alerting.escalate_after * (incident.escalation_level + 1))
            if due > now:
                continue
            role = steps[incident.escalation_level]
            school = settings.school(incident.school_id)
            deliveries = role_deliveries(role, school)
            mention, verdict = session.exec(
                select(MentionRow, AssessmentRow)
                .join(AssessmentRow, AssessmentRow.mention_id == MentionRow.id)
                .where(MentionRow.incident_id == incident.id).order_by(MentionRow.id)).first()
            waited = int((now - as_utc(incident.first_seen)).total_seconds() // 60)
            reason = (f"not acknowledged after {waited} minutes; escalated to {role}. "
                      f"Acknowledge with: schoolwatch incidents ack {incident.id} --by NAME")
            incident.escalation_level += 1
            queue_incident_alert(session, settings, incident, mention, verdict.reasons,
                                 kind="escalation", update_reason=reason, now=now,
                                 deliveries=deliveries)
            audit(session, "daemon", "incident.escalated", "incident", incident.id, at=now,
                  role=role, level=incident.escalation_level, recipients=len(deliveries))
            log.warning("incident %s unacknowledged for %d minutes: escalated to %s (%d people)",
                        incident.id, waited, role, len(deliveries))
            stepped += 1
        session.commit()
    return stepped
