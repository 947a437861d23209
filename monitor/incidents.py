"""Grouping mentions of one story into one incident: exact keys, references, near-duplicates."""
from __future__ import annotations

from datetime import datetime

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, select

from alerts.render import excerpt
from classifiers.base import CATEGORY_PRIORITY, Assessment, Category, Severity
from monitor.clustering import StagedStories, StoryIndex, staged, story_refs, story_text
from monitor.store import Incident, MentionRow, utcnow
from monitor.triage import RESOLVED, transition

log = logging.getLogger(__name__)

TITLE_CHARS = 160
# Matches tried when the best one turns out to be gone from the store.
MATCH_ATTEMPTS = 3


@dataclass(frozen=True)
class IncidentChange:
    """What attaching a mention did to its incident."""

    incident: Incident
    created: bool
    # Why the incident became more serious, when it did ("severity medium -> high").
    escalation: str | None = None
    # A flagged mention joined an incident staff had resolved: it is open again.
    reopened: bool = False

    @property
    def update_reason(self) -> str | None:
        """What the update email says changed, when the change is worth one."""
        reasons = [*(["the story came back after it was resolved; reopened"]
                     if self.reopened else []), *([self.escalation] if self.escalation else [])]
        return "; ".join(reasons) or None


def find_existing(session: Session, row: MentionRow) -> Incident | None:
    """An incident of the same school holding a mention with the same URL or text."""
    keys = []
    if row.canonical_url.startswith("https://"):
        keys.append(MentionRow.canonical_url == row.canonical_url)
    if row.text_hash:
        keys.append(MentionRow.text_hash == row.text_hash)
    # One query per key: with "url OR hash" SQLite can use neither (school, key) index and
    # reads every mention of the school, so each lookup grew with the store.
    for key in keys:
        match = session.exec(
            select(MentionRow.incident_id)
            .where(MentionRow.school_id == row.school_id, key,
                   MentionRow.incident_id.is_not(None), MentionRow.id != row.id)
            .order_by(MentionRow.id)
            .limit(1)
        ).first()
        if match is not None:
            return session.get(Incident, match)
    return None


def find_referenced(session: Session, row: MentionRow, refs: Sequence[str]) -> Incident | None:
    """An incident of the same school holding a post that ``row`` reposts, quotes or replies to."""
    if not refs:
        return None
    match = session.exec(
        select(MentionRow.incident_id)
        .where(MentionRow.school_id == row.school_id, MentionRow.platform == row.platform,
               MentionRow.external_id.in_(list(refs)), MentionRow.incident_id.is_not(None),
               MentionRow.id != row.id)
        .order_by(MentionRow.id)
        .limit(1)
    ).first()
    return session.get(Incident, match) if match is not None else None


def attach(session: Session, row: MentionRow, assessment: Assessment,
           index: StoryIndex | None = None, refs: Sequence[str] = (),
           now: datetime | None = None) -> IncidentChange | None:
    """Attach ``row`` to its story's incident, or open one if it is flagged and new."""
    incident = find_existing(session, row)
    if incident is None:
        # The row keeps the platform payload only when flagged; callers pass refs for the rest.
        incident = find_referenced(session, row, refs or story_refs(row.platform, row.raw))
    # Near-duplicates: what this transaction attaches reaches ``index`` only once it commits.
    stage = staged(session, index) if index is not None else None
    if incident is None and stage is not None:
        incident = find_similar(session, row, stage)
    change = _join(session, row, assessment, incident, now or utcnow())
    if change is not None and stage is not None:
        stage.add(row.id, change.incident.id, row.school_id, story_text(row.title, row.text),
                  row.fetched_at)
    return change


def find_similar(session: Session, row: MentionRow, stage: StagedStories) -> Incident | None:
    """The incident whose story ``row`` retells in other words, checked against the store."""
    text = story_text(row.title, row.text)
    for _ in range(MATCH_ATTEMPTS):
        match = stage.match(row.school_id, text)
        if match is None:
            return None
        incident = session.get(Incident, match.incident_id)
        if incident is None or incident.school_id != row.school_id:
            # Deleted since it was indexed: the index must not keep pointing at it.
            stage.index.forget_incident(match.incident_id)
            continue
        indexed = session.get(MentionRow, match.mention_id)
        if indexed is None or indexed.incident_id != match.incident_id:
            # Erased or purged by another process (SQLite may even have given its id to a new
            # row): an erased post must not steer clustering.
            stage.index.forget_mentions([match.mention_id])
            continue
        log.debug("mention %s joins incident %s as a near-duplicate of mention %s (score %.0f)",
                  row.id, incident.id, match.mention_id, match.score)
        return incident
    return None


def _join(session: Session, row: MentionRow, assessment: Assessment,
          incident: Incident | None, now: datetime) -> IncidentChange | None:
    if incident is None:
        if not assessment.flagged:
            return None
        incident = Incident(
            school_id=row.school_id, category=assessment.category.value,
            severity=assessment.severity.value if assessment.severity else None,
            subtype=assessment.subtype.value if assessment.subtype else None,
            title=excerpt((row.title or row.text).replace("\n", " "), TITLE_CHARS),
            first_seen=now, last_seen=now, mention_count=1, platforms=[row.platform],
        )
        session.add(incident)
        session.flush()
        row.incident_id = incident.id
        return IncidentChange(incident, created=True)
    row.incident_id = incident.id
    incident.last_seen = now
    incident.mention_count += 1
    if row.platform not in incident.platforms:
        incident.platforms = [*incident.platforms, row.platform]
    escalation = _escalate(incident, assessment)
    # A resolved story that flares up again needs someone; a false positive stays closed
    # (its repeats are what staff already judged), though an escalation still alerts.
    reopened = incident.status == RESOLVED and assessment.flagged
    if reopened:
        transition(session, incident, "reopen", "daemon", f"new flagged mention #{row.id}", now)
    session.add(incident)
    return IncidentChange(incident, created=False, escalation=escalation, reopened=reopened)


def _escalate(incident: Incident, assessment: Assessment) -> str | None:
    """Raise the incident's category or severity to the new mention's; say what changed."""
    if not assessment.flagged:
        return None
    current = Category(incident.category)
    if CATEGORY_PRIORITY.index(assessment.category) < CATEGORY_PRIORITY.index(current):
        incident.category = assessment.category.value
        incident.severity = assessment.severity.value if assessment.severity else None
        incident.subtype = assessment.subtype.value if assessment.subtype else None
        return f"category {current.value} -> {assessment.category.value}"
    if assessment.category is not current or assessment.severity is None:
        return None
    old = Severity(incident.severity) if incident.severity else None
    if old is None or assessment.severity.rank > old.rank:
        incident.severity = assessment.severity.value
        if assessment.subtype:
            incident.subtype = assessment.subtype.value
        return f"severity {old.value if old else 'none'} -> {assessment.severity.value}"
    return None
