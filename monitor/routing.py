"""Who hears about an incident, how and when: routes to roles, roles to people and channels."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from classifiers.base import Category, Severity
from monitor.config import AlertingSettings, RouteSettings, SchoolSettings

EMAIL = "email"


@dataclass(frozen=True)
class Delivery:
    """One recipient of one incident: an email address, or a named channel such as Teams."""

    role: str
    recipient: str
    # "email", or "apprise:<name>" for a [channels.<name>] table.
    channel: str = EMAIL


def never_held(category: Category, severity: Severity | None) -> bool:
    """Safeguarding at medium or high severity is never held for quiet hours or a digest."""
    return category is Category.SAFEGUARDING and (severity is None or severity.rank >= Severity.MEDIUM.rank)


def immediate_routes(category: Category, severity: Severity | None, school: SchoolSettings,
                     routes: list[RouteSettings]) -> list[RouteSettings]:
    """Routes that send this incident now (digest routes too, when it must not wait)."""
    chosen = []
    for route in routes:
        if route.category is not category or not route.applies_to(school.id):
            continue
        # Safeguarding ignores min_severity: a DSL sees every possible risk to a pupil.
        if category is not Category.SAFEGUARDING and severity is not None \
                and severity.rank < route.min_severity.rank:
            continue
        if route.cadence == "immediate" or never_held(category, severity):
            chosen.append(route)
    return chosen


def recipients_for(category: Category, severity: Severity | None, school: SchoolSettings,
                   routes: list[RouteSettings]) -> list[Delivery]:
    """Everyone the immediate routes send this incident to, each once, in route order."""
    deliveries: dict[tuple[str, str], Delivery] = {}
    for route in immediate_routes(category, severity, school, routes):
        for role in route.roles:
            for channel in route.channels:
                if channel == EMAIL:
                    for person in school.recipients.get(role, []):
                        deliveries.setdefault((EMAIL, person.lower()), Delivery(role, person))
                else:
                    deliveries.setdefault((channel, channel), Delivery(role, channel, f"apprise:{channel}"))
    return list(deliveries.values())


def role_deliveries(role: str, school: SchoolSettings) -> list[Delivery]:
    """Email deliveries to everyone holding ``role`` at the school."""
    return [Delivery(role, person) for person in school.recipients.get(role, [])]


def release_time(now: datetime, alerting: AlertingSettings, timezone: str) -> datetime:
    """``now``, or the end of quiet hours when ``now`` falls inside them."""
    if alerting.quiet_hours_start is None or alerting.quiet_hours_end is None:
        return now
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    start, end = _clock(alerting.quiet_hours_start), _clock(alerting.quiet_hours_end)
    today = local.time()
    inside = (start <= today < end) if start < end else (today >= start or today < end)
    if not inside:
        return now
    release_day = local.date() if today < end else local.date() + timedelta(days=1)
    return datetime.combine(release_day, end, tzinfo=zone).astimezone(now.tzinfo)


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))
