"""Daily and weekly digests: what happened at one school, for one role, in one period."""
from __future__ import annotations

import base64
import logging
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from alerts.digest import DigestIncident, DigestView, RenderedDigest, render_digest
from monitor.config import RouteSettings, SchoolSettings, Settings
from monitor.outbox import message_id
from monitor.store import AssessmentRow, Incident, MentionRow, OutboxMessage, as_utc

log = logging.getLogger(__name__)

PERIOD_DAYS = {"daily": 1, "weekly": 7}
ALERT_KINDS = ("alert", "escalation")


def digest_routes(settings: Settings, period: str) -> list[RouteSettings]:
    """Routes whose cadence is ``period``."""
    return [r for r in settings.routes if r.cadence == period]


def roles_for(settings: Settings, school: SchoolSettings, period: str,
              at: str | None = None) -> list[str]:
    """Roles at ``school`` that get the ``period`` digest (at that time, when given)."""
    roles: dict[str, None] = {}
    for route in digest_routes(settings, period):
        if route.applies_to(school.id) and (at is None or route.at == at):
            for role in route.roles:
                if school.recipients.get(role):
                    roles[role] = None
    return list(roles)


def categories_for(settings: Settings, school: SchoolSettings, role: str) -> list[str]:
    """Categories any route sends to ``role`` at ``school`` (so the digest lists alerts too)."""
    return sorted({r.category.value for r in settings.routes
                   if role in r.roles and r.applies_to(school.id)})


def build_view(session: Session, settings: Settings, school: SchoolSettings, role: str,
               period: str, end: datetime) -> DigestView:
    """Gather the period's counts, incidents and trend for one school and role."""
    start = end - timedelta(days=PERIOD_DAYS[period])
    zone = ZoneInfo(settings.timezone)
    categories = categories_for(settings, school, role)
    mentions = session.exec(
        select(MentionRow.platform, AssessmentRow.category, MentionRow.fetched_at)
        .join(AssessmentRow, AssessmentRow.mention_id == MentionRow.id)
        .where(MentionRow.school_id == school.id,
               MentionRow.fetched_at >= end - timedelta(days=settings.alerting.trend_days),
               MentionRow.fetched_at < end)).all()
    in_period = [(p, c) for p, c, at in mentions if as_utc(at) >= start]
    incidents = session.exec(
        select(Incident).where(Incident.school_id == school.id,
                               col(Incident.category).in_(categories),
                               Incident.last_seen >= start, Incident.first_seen < end)
        .order_by(col(Incident.last_seen).desc())).all()
    alerted = dict(session.exec(
        select(OutboxMessage.incident_id, func.min(OutboxMessage.created_at))
        .where(col(OutboxMessage.incident_id).in_([i.id for i in incidents]),
               col(OutboxMessage.kind).in_(ALERT_KINDS), OutboxMessage.role == role)
        .group_by(OutboxMessage.incident_id)).all())
    first_urls = dict(session.exec(
        select(MentionRow.incident_id, func.min(MentionRow.url))
        .where(col(MentionRow.incident_id).in_([i.id for i in incidents]))
        .group_by(MentionRow.incident_id)).all())
    return DigestView(
        school_name=school.name, role=role, period=period, start=start, end=end,
        timezone=settings.timezone,
        counts_by_category=dict(Counter(c for _, c in in_period)),
        counts_by_platform=dict(Counter(p for p, _ in in_period)),
        trend=_trend(mentions, end, settings.alerting.trend_days, zone),
        incidents=[DigestIncident(
            incident_id=i.id, category=i.category, severity=i.severity, subtype=i.subtype,
            title=i.title, platforms=list(i.platforms), mention_count=i.mention_count,
            first_seen=as_utc(i.first_seen), last_seen=as_utc(i.last_seen), status=i.status,
            url=first_urls.get(i.id) or "",
            alerted_at=as_utc(alerted[i.id]) if i.id in alerted else None,
        ) for i in incidents],
    )


def _trend(mentions: list[tuple[str, str, datetime]], end: datetime, days: int,
           zone: ZoneInfo) -> list[tuple[date, dict[str, int]]]:
    last = end.astimezone(zone).date()
    by_day: dict[date, Counter[str]] = defaultdict(Counter)
    for _, category, at in mentions:
        by_day[as_utc(at).astimezone(zone).date()][category] += 1
    return [(day, dict(by_day[day])) for day in
            (last - timedelta(days=offset) for offset in range(days - 1, -1, -1))]


def queue_digests(engine: Engine, settings: Settings, period: str, now: datetime,
                  at: str | None = None) -> int:
    """Queue the ``period`` digest for every school and role due at ``at``; never twice."""
    queued = 0
    with Session(engine) as session:
        for school in settings.schools:
            for role in roles_for(settings, school, period, at):
                view = build_view(session, settings, school, role, period, now)
                rendered = render_digest(view)
                queued += _queue(session, settings, school, role, view, rendered)
        session.commit()
    if queued:
        log.info("%s digests queued: %d messages", period, queued)
    return queued


def _queue(session: Session, settings: Settings, school: SchoolSettings, role: str,
           view: DigestView, rendered: RenderedDigest) -> int:
    day = view.end.astimezone(ZoneInfo(settings.timezone)).date().isoformat()
    images = {cid: base64.b64encode(data).decode() for cid, data in rendered.images.items()}
    count = 0
    for person in school.recipients.get(role, []):
        key = f"digest:{view.period}:{school.id}:{role}:{day}:{person.lower()}"
        if session.exec(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == key)).first():
            continue
        session.add(OutboxMessage(
            dedupe_key=key, kind="digest", school_id=school.id, role=role,
            channel=settings.email.channel, recipient=person, sender=settings.email.sender,
            subject=rendered.subject, body_text=rendered.text, body_html=rendered.html,
            message_id=message_id(settings.email.sender, "digest", view.period, school.id, day,
                                  person.lower()),
            images=images, created_at=view.end, next_attempt_at=view.end,
        ))
        count += 1
    return count


def preview(engine: Engine, settings: Settings, school_id: str, period: str,
            role: str | None, now: datetime) -> tuple[str, RenderedDigest]:
    """Render the digest that would go now, without queueing it; returns (role, digest)."""
    school = settings.school(school_id)
    role = role or next(iter(roles_for(settings, school, period)), "headteacher")
    with Session(engine) as session:
        return role, render_digest(build_view(session, settings, school, role, period, now))
