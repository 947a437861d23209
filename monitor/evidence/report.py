"""The human-readable evidence report: autoescaped HTML from a Jinja2 template."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from monitor.evidence.canonical import LOCAL_ZONE
from monitor.store import AssessmentRow, AuditEntry, Incident, MentionRow, OutboxMessage, as_utc


@dataclass(frozen=True)
class ItemView:
    """One evidence item as listed in the report."""

    kind: str
    path: str | None
    sha256: str | None
    size: int
    captured_at: datetime
    source_url: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class MentionView:
    """One mention on the timeline, with its verdict and evidence."""

    mention: MentionRow
    assessment: AssessmentRow | None
    items: list[ItemView] = field(default_factory=list)

    @property
    def recorded(self) -> bool:
        """True when a canonical record was captured for this mention."""
        return any(i.kind == "record" and i.sha256 for i in self.items)


@dataclass(frozen=True)
class ReportView:
    """Everything the report shows."""

    incident: Incident
    school_name: str
    exported_at: datetime
    exported_by: str
    version: str
    mentions: list[MentionView]
    audit: list[AuditEntry]
    messages: list[OutboxMessage]


def utc_text(value: datetime | None) -> str:
    """'2026-11-20 22:47:00 UTC', or an empty string."""
    return "" if value is None else f"{as_utc(value):%Y-%m-%d %H:%M:%S} UTC"


def london_text(value: datetime | None) -> str:
    """'Fri 20 Nov 2026, 22:47:00 GMT' in Europe/London, or an empty string."""
    if value is None:
        return ""
    local = as_utc(value).astimezone(ZoneInfo(LOCAL_ZONE))
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M:%S %Z}"


def _detail(value: dict[str, Any] | None) -> str:
    if not value:
        return ""
    return ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                     for k, v in sorted(value.items()))


@cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("monitor.evidence", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html",),
                                                   default_for_string=True, default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=utc_text, london=london_text, detail=_detail)
    return env


def render_report(view: ReportView) -> str:
    """The report as an HTML document."""
    return _environment().get_template("report.html").render(v=view)
