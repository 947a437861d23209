"""The outbox: messages are stored before they are sent, and retried until they go."""
from __future__ import annotations

import base64
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr

from sqlalchemy import Engine, or_, update
from sqlmodel import Session, select

from alerts.base import Channel, DeliveryError, OutgoingMessage
from alerts.render import AlertView, excerpt, render_alert, render_notice
from classifiers.base import Assessment, Category, Severity
from monitor.config import Settings
from monitor.routing import EMAIL, Delivery, recipients_for, release_time
from monitor.store import Incident, MentionRow, OutboxMessage, as_utc, utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)
PERMANENT_BACKOFF = timedelta(hours=6)


def message_id(sender: str, *parts: object) -> str:
    """A stable Message-ID: the same parts always give the same ID."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "schoolwatch.local"
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:20]
    return f"<{digest}.schoolwatch@{domain}>"


def queue_incident_alert(session: Session, settings: Settings, incident: Incident,
                         mention: MentionRow, reasons: list[str], kind: str = "alert",
                         update_reason: str | None = None, now: datetime | None = None,
                         deliveries: list[Delivery] | None = None) -> int:
    """Queue an alert, update or escalation about ``incident`` for each recipient."""
    now = now or utcnow()
    school = settings.school(incident.school_id)
    category, severity = _category(incident), _severity(incident)
    if kind != "alert":
        incident.revision += 1
        session.add(incident)
    view = AlertView(
        kind=kind, school_name=school.name, category=incident.category,
        severity=incident.severity, subtype=incident.subtype, platform=mention.platform,
        author=mention.author, title=mention.title, excerpt=excerpt(mention.text),
        url=mention.url, published_at=as_utc(mention.published_at),
        reasons=list(reasons), incident_id=incident.id,
        mention_count=incident.mention_count, timezone=settings.timezone,
        update_reason=update_reason, platforms=list(incident.platforms),
    )
    subject, text, html = render_alert(view)
    if deliveries is None:
        deliveries = recipients_for(category, severity, school, settings.routes)
    if not deliveries:
        log.warning("incident %s (%s) has no recipients at school %s; check routes",
                    incident.id, incident.category, school.id)
    # Quiet hours hold everything except safeguarding, which goes at once, day or night.
    due = now if category is Category.SAFEGUARDING else release_time(
        now, settings.alerting, settings.timezone)
    for delivery in deliveries:
        person = delivery.recipient.lower()
        headers = {}
        if kind != "alert":
            first = message_id(settings.email.sender, "incident", incident.id, 0, person)
            headers = {"In-Reply-To": first, "References": first}
        channel = settings.email.channel if delivery.channel == EMAIL else delivery.channel
        session.add(OutboxMessage(
            dedupe_key=f"{kind}:{incident.id}:{incident.revision}:{delivery.channel}:{person}",
            kind=kind, incident_id=incident.id, school_id=school.id, role=delivery.role,
            channel=channel, recipient=delivery.recipient,
            sender=settings.email.sender, subject=subject, body_text=text, body_html=html,
            message_id=message_id(settings.email.sender, "incident", incident.id,
                                  incident.revision, person),
            headers=headers, created_at=now, next_attempt_at=due,
        ))
    if due > now:
        log.info("incident %s: %d alerts held for quiet hours until %s UTC", incident.id,
                 len(deliveries), f"{due:%Y-%m-%d %H:%M}")
    return len(deliveries)


def queue_admin_notice(session: Session, settings: Settings, key: str, subject: str,
                       lines: list[str], now: datetime | None = None) -> int:
    """Queue a notice for the admins (a failing source, undeliverable mail)."""
    if not settings.admin.recipients:
        log.warning("no [admin] recipients configured; not emailing: %s", subject)
        return 0
    subject, text, html = render_notice(f"[Schoolwatch] {subject}", lines)
    for person in settings.admin.recipients:
        session.add(OutboxMessage(
            dedupe_key=f"admin:{key}:{person.lower()}", kind="admin", role="admin",
            channel=settings.email.channel, recipient=person, sender=settings.email.sender,
            subject=subject, body_text=text, body_html=html,
            message_id=message_id(settings.email.sender, "admin", key, person.lower()),
            created_at=now or utcnow(), next_attempt_at=now or utcnow(),
        ))
    return len(settings.admin.recipients)


@dataclass
class DeliveryReport:
    """What one outbox pass did."""

    sent: int = 0
    failed: int = 0


def deliver_due(engine: Engine, channel_for: Callable[[str], Channel],
                now: Callable[[], datetime] = utcnow, limit: int = 100,
                lease: timedelta = LEASE,
                on_permanent: Callable[[OutboxMessage, str], None] | None = None) -> DeliveryReport:
    """Send every due message once; failures are rescheduled with backoff, never dropped."""
    report = DeliveryReport()
    with Session(engine) as session:
        due = session.exec(
            select(OutboxMessage.id)
            .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now(),
                   or_(OutboxMessage.leased_until.is_(None), OutboxMessage.leased_until < now()))
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            .limit(limit)
        ).all()
    unreachable: set[str] = set()
    for row_id in due:
        row = _claim(engine, row_id, now(), lease)
        if row is None:
            continue  # another sender took it
        if row.channel in unreachable:
            _release(engine, row.id)  # the relay is down: try again next pass, not 100 times now
            continue
        try:
            channel_for(row.channel).send(_outgoing(row))
        except DeliveryError as exc:
            _failed(engine, row, str(exc), exc.permanent, now())
            report.failed += 1
            if exc.permanent:
                if on_permanent is not None:
                    on_permanent(row, str(exc))
            else:
                unreachable.add(row.channel)
        except Exception as exc:  # a channel bug must not lose the message
            log.exception("channel %s crashed sending outbox message %s", row.channel, row.id)
            _failed(engine, row, f"{type(exc).__name__}: {exc}", False, now())
            report.failed += 1
        else:
            _sent(engine, row.id, now())
            report.sent += 1
    return report


def _claim(engine: Engine, row_id: int, at: datetime, lease: timedelta) -> OutboxMessage | None:
    """Lease the row so that only one sender (thread or replica) sends it."""
    with Session(engine) as session:
        claimed = session.exec(
            update(OutboxMessage)
            .where(OutboxMessage.id == row_id, OutboxMessage.status == "pending",
                   or_(OutboxMessage.leased_until.is_(None), OutboxMessage.leased_until < at))
            .values(leased_until=at + lease)
        ).rowcount
        session.commit()
        if not claimed:
            return None
        row = session.get(OutboxMessage, row_id)
        session.expunge(row)
        return row


def _release(engine: Engine, row_id: int) -> None:
    with Session(engine) as session:
        session.exec(update(OutboxMessage).where(OutboxMessage.id == row_id)
                     .values(leased_until=None))
        session.commit()


def _sent(engine: Engine, row_id: int, at: datetime) -> None:
    with Session(engine) as session:
        session.exec(update(OutboxMessage).where(OutboxMessage.id == row_id).values(
            status="sent", sent_at=at, leased_until=None, last_error=None,
            attempts=OutboxMessage.attempts + 1))
        session.commit()


def _failed(engine: Engine, row: OutboxMessage, error: str, permanent: bool,
            at: datetime) -> None:
    attempts = row.attempts + 1
    delay = PERMANENT_BACKOFF if permanent else min(
        timedelta(seconds=30 * 2 ** (attempts - 1)), MAX_BACKOFF)
    delay *= random.uniform(0.9, 1.1)
    log.warning("outbox message %s to %s not delivered (attempt %d, next in %ds): %s",
                row.id, row.recipient, attempts, delay.total_seconds(), error)
    with Session(engine) as session:
        session.exec(update(OutboxMessage).where(OutboxMessage.id == row.id).values(
            attempts=attempts, last_error=error[:2000], leased_until=None,
            next_attempt_at=at + delay))
        session.commit()


def _outgoing(row: OutboxMessage) -> OutgoingMessage:
    images = {cid: base64.b64decode(data) for cid, data in (row.images or {}).items()}
    return OutgoingMessage(recipient=row.recipient, sender=row.sender, subject=row.subject,
                           text=row.body_text, html=row.body_html, message_id=row.message_id,
                           headers=row.headers or {}, images=images)


def _category(incident: Incident) -> Category:
    return Category(incident.category)


def _severity(incident: Incident) -> Severity | None:
    return Severity(incident.severity) if incident.severity else None
