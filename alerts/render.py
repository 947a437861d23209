"""Rendering alert emails with Jinja2: autoescaped HTML with inline CSS, and plain text."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

EXCERPT_CHARS = 800

# What each school policy behind this product asks of the reader (seeds/, KCSIE, Prevent).
POLICY_NOTES = {
    "safeguarding": (
        "Follow your school's safeguarding procedure now. Do not delete, forward or share the "
        "content, and do not contact the author; the post is preserved in Schoolwatch as "
        "evidence. If a child is in immediate danger, call 999."
    ),
    "disparaging": (
        "Keep the evidence (Schoolwatch has recorded the post, its time, date and location) "
        "and do not respond publicly. Report it to the headteacher under the social media "
        "policy; staff who are targeted may want union or professional-association support."
    ),
    "reputational": (
        "Consider whether a response is needed through the school's usual communications "
        "route. Do not engage from personal accounts."
    ),
}
SEVERITY_COLOURS = {"high": "#b00020", "medium": "#b35c00", "low": "#5f6368", None: "#5f6368"}
# Digest badges and the trend chart; unknown categories fall back to "none".
CATEGORY_ORDER = ("safeguarding", "disparaging", "reputational", "none")
CATEGORY_COLOURS = {"safeguarding": "#b00020", "disparaging": "#b35c00",
                    "reputational": "#4f6d8c", "none": "#c4c7cc"}
CATEGORY_LABELS = {"none": "not flagged"}


@dataclass(frozen=True)
class AlertView:
    """Everything an alert email shows, already in display form."""

    kind: str  # alert or update
    school_name: str
    category: str
    severity: str | None
    subtype: str | None
    platform: str
    author: str | None
    title: str | None
    excerpt: str
    url: str
    published_at: datetime
    reasons: list[str]
    incident_id: int
    mention_count: int
    timezone: str = "Europe/London"
    update_reason: str | None = None
    platforms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Fields shown on one line must stay on one line: a post must not forge the
        # email's own "Incident:" or "What to do:" lines.
        for name in ("school_name", "platform", "author", "title", "update_reason"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, one_line(value))
        object.__setattr__(self, "url", _NOT_IN_URL.sub("", self.url or ""))

    @property
    def safe_url(self) -> str | None:
        """The post's link when it is plain http(s); anything else is shown as text only."""
        return safe_url(self.url)

    @property
    def local_time(self) -> str:
        """Publication time in the school's time zone, e.g. 'Tue 3 Mar 2026, 21:14 GMT'."""
        return local_time(self.published_at, self.timezone)

    @property
    def subtype_label(self) -> str | None:
        """'self harm' for 'self_harm'."""
        return self.subtype.replace("_", " ") if self.subtype else None

    @property
    def severity_colour(self) -> str:
        """Banner colour for the severity."""
        return SEVERITY_COLOURS.get(self.severity, SEVERITY_COLOURS[None])

    @property
    def policy_note(self) -> str:
        """What the school's policy asks of the reader."""
        return POLICY_NOTES.get(self.category, "")


def safe_url(url: str) -> str | None:
    """``url`` when it is plain http(s) with a host; anything else is shown as text only."""
    if _NOT_IN_URL.search(url):
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def local_time(moment: datetime, timezone: str) -> str:
    """'Tue 3 Mar 2026, 21:14 GMT' in ``timezone``; naive times are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the store keeps UTC without tzinfo
    local = moment.astimezone(ZoneInfo(timezone))
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M %Z}"


_NOT_IN_URL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str) -> str:
    """Text with line breaks, tabs and control characters folded into single spaces."""
    return _BREAKS.sub(" ", text).strip()


def quote(text: str) -> str:
    """Text with every line prefixed '> ', so post lines cannot pass for the template's."""
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def subject_for(view: AlertView) -> str:
    """Subject naming school, category, severity and platform."""
    what = view.category.upper()
    detail = ", ".join(x for x in (view.severity, view.subtype_label) if x)
    prefix = {"update": "Update: ", "escalation": "ESCALATED: "}.get(view.kind, "")
    return (f"[Schoolwatch] {prefix}{what}{f' ({detail})' if detail else ''} - "
            f"{view.school_name} - {view.platform}")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The first ``limit`` characters, cut at a word, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"


def nl2br(text: str) -> Markup:
    """Escape ``text`` and keep its line breaks as <br>."""
    return Markup("<br>\n").join(escape(line) for line in text.split("\n"))


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("alerts", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default=False, default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["nl2br"] = nl2br
    env.filters["quote"] = quote
    return env


def render_alert(view: AlertView) -> tuple[str, str, str]:
    """(subject, plain text, HTML) for one alert."""
    env = _environment()
    text = env.get_template("alert.txt").render(v=view)
    html = env.get_template("alert.html").render(v=view)
    return subject_for(view), text, html


def render_notice(subject: str, lines: list[str]) -> tuple[str, str, str]:
    """(subject, text, HTML) for an admin notice such as a failing source."""
    env = _environment()
    return (subject, env.get_template("notice.txt").render(subject=subject, lines=lines),
            env.get_template("notice.html").render(subject=subject, lines=lines))
