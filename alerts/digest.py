"""The digest email: counts, the period's incidents, and a trend chart as an inline PNG."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from alerts.chart import HEIGHT_PX, WIDTH_PX, render_trend_png, trend_categories
from alerts.render import (CATEGORY_COLOURS, CATEGORY_LABELS, CATEGORY_ORDER, POLICY_NOTES,
                           SEVERITY_COLOURS, _environment, excerpt, local_time, safe_url)


@dataclass(frozen=True)
class DigestIncident:
    """One incident as a digest lists it."""

    incident_id: int
    category: str
    severity: str | None
    subtype: str | None
    title: str
    platforms: list[str]
    mention_count: int
    first_seen: datetime
    last_seen: datetime
    status: str
    url: str
    # When an immediate alert about it went to this recipient's role, if one did.
    alerted_at: datetime | None = None


@dataclass(frozen=True)
class DigestView:
    """Everything a daily or weekly digest for one school and role shows."""

    school_name: str
    role: str
    period: str  # daily or weekly
    start: datetime
    end: datetime
    timezone: str
    counts_by_category: dict[str, int]
    counts_by_platform: dict[str, int]
    # Mentions per day (local dates) and category over the trend window, oldest first.
    trend: list[tuple[date, dict[str, int]]]
    incidents: list[DigestIncident] = field(default_factory=list)


@dataclass(frozen=True)
class RenderedDigest:
    """A rendered digest: subject, text, HTML referring to inline images by Content-ID."""

    subject: str
    text: str
    html: str
    # Content-ID (without <>) -> PNG bytes, referenced in the HTML as cid:<id>.
    images: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class IncidentRow:
    """One listed incident in display form."""

    incident_id: int
    category: str
    category_colour: str
    category_text_colour: str
    severity: str | None
    severity_colour: str
    subtype_label: str | None
    title: str
    platforms: str
    mentions: str
    first_seen: str
    last_seen: str
    status: str
    url: str
    safe_url: str | None
    alerted_at: str | None


@dataclass(frozen=True)
class TrendRow:
    """One day of the trend window: label, total and counts in ``categories`` order."""

    label: str
    total: int
    counts: list[int]


CHART_CID = "trend"
TITLE_CHARS = 300


def role_label(role: str) -> str:
    """'DSL' for 'dsl', 'deputy DSL' for 'deputy_dsl', other roles with spaces."""
    return " ".join("DSL" if word == "dsl" else word for word in role.split("_"))


def category_label(category: str) -> str:
    """'not flagged' for 'none'; other categories as they are."""
    return CATEGORY_LABELS.get(category, category)


def plural(count: int, word: str) -> str:
    """'1 incident', '3 incidents'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def digest_subject(view: DigestView) -> str:
    """'[Schoolwatch] Daily digest - School - 3 incidents (1 safeguarding)'."""
    count = len(view.incidents)
    safeguarding = sum(1 for i in view.incidents if i.category == "safeguarding")
    what = plural(count, "incident") if count else "no incidents"
    if safeguarding:
        what += f" ({safeguarding} safeguarding)"
    return f"[Schoolwatch] {view.period.capitalize()} digest - {view.school_name} - {what}"


def _ordered(counts: dict[str, int]) -> list[str]:
    known = [name for name in CATEGORY_ORDER if name in counts]
    return known + sorted(set(counts) - set(CATEGORY_ORDER))


def _summary(view: DigestView) -> str:
    if not view.incidents:
        return "No incidents this period."
    by_category: dict[str, int] = {}
    for incident in view.incidents:
        by_category[incident.category] = by_category.get(incident.category, 0) + 1
    parts = ", ".join(f"{by_category[c]} {category_label(c)}" for c in _ordered(by_category))
    high = sum(1 for i in view.incidents if i.severity == "high")
    alerted = sum(1 for i in view.incidents if i.alerted_at is not None)
    summary = f"{plural(len(view.incidents), 'incident')} this period: {parts}"
    summary += f" ({high} high severity)." if high else "."
    if alerted == 1:
        summary += " 1 was already sent as an immediate alert and is listed again here."
    elif alerted:
        summary += (f" {alerted} were already sent as immediate alerts and are listed "
                    "again here.")
    return summary


def _row(incident: DigestIncident, timezone: str) -> IncidentRow:
    colour = CATEGORY_COLOURS.get(incident.category, CATEGORY_COLOURS["none"])
    return IncidentRow(
        incident_id=incident.incident_id,
        category=category_label(incident.category),
        category_colour=colour,
        # Light grey needs dark text to stay readable; the other badges take white.
        category_text_colour="#202124" if colour == CATEGORY_COLOURS["none"] else "#ffffff",
        severity=incident.severity,
        severity_colour=SEVERITY_COLOURS.get(incident.severity, SEVERITY_COLOURS[None]),
        subtype_label=incident.subtype.replace("_", " ") if incident.subtype else None,
        # One line per title: a digest lists many, and the link leads to the full post.
        title=excerpt(" ".join(incident.title.split()), TITLE_CHARS) or "(no title)",
        platforms=", ".join(incident.platforms) or "unknown",
        mentions=plural(incident.mention_count, "mention"),
        first_seen=local_time(incident.first_seen, timezone),
        last_seen=local_time(incident.last_seen, timezone),
        status=incident.status,
        url=incident.url,
        safe_url=safe_url(incident.url),
        alerted_at=local_time(incident.alerted_at, timezone) if incident.alerted_at else None,
    )


def _trend_alt(view: DigestView, categories: list[str]) -> str:
    first, last = view.trend[0][0], view.trend[-1][0]
    days = []
    for day, counts in view.trend:
        total = sum(counts.values())
        detail = ", ".join(f"{counts[c]} {category_label(c)}" for c in categories if counts.get(c))
        days.append(f"{day.day} {day:%b} {total}{f' ({detail})' if detail and total else ''}")
    return (f"Mentions per day by category, {first.day} {first:%b} to {last.day} {last:%b %Y}: "
            + "; ".join(days) + ".")


def trend_chart_png(view: DigestView) -> bytes:
    """The stacked bar chart of the view's trend as PNG bytes (deterministic)."""
    return render_trend_png(view.trend)


def render_digest(view: DigestView) -> RenderedDigest:
    """Subject, complete plain text, and HTML with the trend chart as an inline image."""
    categories = trend_categories(view.trend)
    incidents = sorted(view.incidents, key=lambda i: (_utc(i.last_seen), i.incident_id),
                       reverse=True)
    present = {i.category for i in view.incidents}
    page = dict(
        v=view,
        role=role_label(view.role),
        heading=f"{view.period.capitalize()} digest",
        summary=_summary(view),
        period=f"{local_time(view.start, view.timezone)} to {local_time(view.end, view.timezone)}",
        by_category=[(category_label(c), view.counts_by_category[c],
                      CATEGORY_COLOURS.get(c, CATEGORY_COLOURS["none"]))
                     for c in _ordered(view.counts_by_category)],
        by_platform=sorted(view.counts_by_platform.items(), key=lambda kv: (-kv[1], kv[0])),
        incidents=[_row(i, view.timezone) for i in incidents],
        trend_categories=[category_label(c) for c in categories],
        trend_rows=[TrendRow(f"{day:%a} {day.day} {day:%b}", sum(counts.values()),
                             [counts.get(c, 0) for c in categories])
                    for day, counts in view.trend],
        chart_cid=CHART_CID if view.trend else None,
        chart_alt=_trend_alt(view, categories) if view.trend else "",
        chart_size=(WIDTH_PX, HEIGHT_PX),
        policy_notes=[(c, POLICY_NOTES[c]) for c in CATEGORY_ORDER
                      if c in present and c in POLICY_NOTES],
    )
    env = _environment()
    images = {CHART_CID: trend_chart_png(view)} if view.trend else {}
    return RenderedDigest(subject=digest_subject(view),
                          text=env.get_template("digest.txt").render(**page),
                          html=env.get_template("digest.html").render(**page), images=images)


def _utc(moment: datetime) -> datetime:
    # The store keeps UTC without tzinfo; sorting must not mix naive and aware times.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
