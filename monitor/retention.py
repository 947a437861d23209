"""Retention: delete what is older than the config keeps, except incidents under legal hold."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlmodel import Session, SQLModel, col, select

from monitor.config import RetentionSettings
from monitor.feedback import FeedbackExample
from monitor.store import (
    AssessmentRow,
    Incident,
    MentionRow,
    OutboxMessage,
    SeenKey,
    as_utc,
    audit,
    utcnow,
)

log = logging.getLogger(__name__)

# Tables that hang off a mention and go with it (evidence registers itself here).
MENTION_CHILDREN: list[type[SQLModel]] = [AssessmentRow, FeedbackExample]
# Tables that hang off an incident (other than its mentions) and go with it.
INCIDENT_CHILDREN: list[type[SQLModel]] = [OutboxMessage]


def purge(engine: Engine, settings: RetentionSettings, now: datetime | None = None,
          dry_run: bool = False, actor: str = "retention") -> Counter[str]:
    """Delete expired records in one transaction; return counts per kind, audited and logged."""
    now = now or utcnow()
    counts: Counter[str] = Counter()
    with Session(engine) as session:
        expired = _expired_incidents(session, settings, now)
        held = session.exec(select(Incident.id).where(col(Incident.legal_hold).is_(True))).all()
        counts["incidents_on_hold_kept"] = len(held)
        counts.update(delete_incidents(session, expired))
        cutoff = now - timedelta(days=settings.unflagged_days)
        loose = session.exec(select(MentionRow.id).where(
            MentionRow.incident_id.is_(None), MentionRow.fetched_at < cutoff)).all()
        counts["unflagged_mentions"] += delete_mentions(session, loose)
        counts["sent_messages"] += _delete(session, OutboxMessage, (
            OutboxMessage.status == "sent",
            OutboxMessage.sent_at < now - timedelta(days=settings.sent_messages_days)))
        counts["seen_ids"] += _delete(session, SeenKey, (
            SeenKey.seen_at < now - timedelta(days=settings.seen_ids_days),))
        counts["feedback_examples"] += _delete(session, FeedbackExample, (
            FeedbackExample.given_at < now - timedelta(days=settings.feedback_days),))
        removed = {k: v for k, v in counts.items() if v and k != "incidents_on_hold_kept"}
        if dry_run:
            session.rollback()
        else:
            audit(session, actor, "retention.purge", at=now, **dict(counts))
            session.commit()
    log.info("retention purge%s: %s", " (dry run)" if dry_run else "",
             ", ".join(f"{k} {v}" for k, v in sorted(removed.items())) or "nothing expired")
    return counts


def _expired_incidents(session: Session, settings: RetentionSettings, now: datetime) -> list[int]:
    expired: list[int] = []
    for incident_id, category, status, last_seen in session.exec(
            select(Incident.id, Incident.category, Incident.status, Incident.last_seen)
            .where(col(Incident.legal_hold).is_(False))):
        days = (settings.false_positive_days if status == "false_positive"
                else settings.for_category(category))
        if as_utc(last_seen) < now - timedelta(days=days):
            expired.append(incident_id)
    return expired


def delete_incidents(session: Session, incident_ids: Iterable[int]) -> Counter[str]:
    """Delete incidents with their mentions and messages (callers check holds)."""
    counts: Counter[str] = Counter()
    ids = list(incident_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        mentions = session.exec(select(MentionRow.id).where(
            col(MentionRow.incident_id).in_(chunk))).all()
        counts["incident_mentions"] += delete_mentions(session, mentions)
        for table in INCIDENT_CHILDREN:
            counts[table.__tablename__] += _delete(session, table, (
                col(table.incident_id).in_(chunk),))
        counts["incidents"] += _delete(session, Incident, (col(Incident.id).in_(chunk),))
    return counts


def delete_mentions(session: Session, mention_ids: Iterable[int]) -> int:
    """Delete mentions and everything that hangs off them; returns the mention count."""
    ids = list(mention_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for table in MENTION_CHILDREN:
            _delete(session, table, (col(table.mention_id).in_(chunk),))
        _delete(session, MentionRow, (col(MentionRow.id).in_(chunk),))
    return len(ids)


def _delete(session: Session, table: type[SQLModel], where: tuple) -> int:
    return session.exec(delete(table).where(*where)).rowcount or 0
