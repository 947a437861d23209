"""What staff teach the service: false positives as labelled examples, and suppression rules."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Column, Engine, Text
from sqlmodel import Field, Session, SQLModel, select

from monitor.store import Incident, MentionRow, audit, utcnow
from monitor.textnorm import fold

KINDS = ("author", "phrase")


class SuppressionRule(SQLModel, table=True):
    """Mentions from this author, or containing this phrase, are not alerted for one school."""

    __tablename__ = "suppression_rule"

    id: int | None = Field(default=None, primary_key=True)
    school_id: str = Field(index=True)
    kind: str
    value: str
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)
    removed_by: str | None = None
    removed_at: datetime | None = None


class FeedbackExample(SQLModel, table=True):
    """A mention a person judged: the label they gave, for `schoolwatch train`."""

    __tablename__ = "feedback_example"

    id: int | None = Field(default=None, primary_key=True)
    mention_id: int | None = Field(default=None, foreign_key="mention.id", index=True)
    incident_id: int | None = Field(default=None, index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    label: str
    predicted: str
    given_by: str
    given_at: datetime = Field(default_factory=utcnow)


class FeedbackError(Exception):
    """A rule cannot be added or removed as asked."""


def record_false_positive(session: Session, incident: Incident, actor: str) -> int:
    """Keep every mention of a false-positive incident as a `none` example; returns how many."""
    mentions = session.exec(select(MentionRow).where(MentionRow.incident_id == incident.id)).all()
    for mention in mentions:
        text = f"{mention.title}\n{mention.text}" if mention.title and mention.title not in mention.text else mention.text
        session.add(FeedbackExample(mention_id=mention.id, incident_id=incident.id, text=text,
                                    label="none", predicted=incident.category, given_by=actor))
    return len(mentions)


def add_rule(engine: Engine, school_id: str, kind: str, value: str, actor: str,
             reason: str | None = None) -> SuppressionRule:
    """Add a suppression rule and audit it."""
    if kind not in KINDS:
        raise FeedbackError(f"kind must be one of {', '.join(KINDS)}")
    if len(value.strip()) < 3:
        raise FeedbackError("a suppression value needs at least 3 characters")
    with Session(engine) as session:
        rule = SuppressionRule(school_id=school_id, kind=kind, value=value.strip(), reason=reason,
                               created_by=actor)
        session.add(rule)
        session.flush()
        audit(session, actor, "suppression.add", "suppression_rule", rule.id, school=school_id,
              kind=kind, value=rule.value, reason=reason)
        session.commit()
        session.refresh(rule)
        session.expunge(rule)
        return rule


def remove_rule(engine: Engine, rule_id: int, actor: str) -> SuppressionRule:
    """Deactivate a rule (kept for the record) and audit it."""
    with Session(engine) as session:
        rule = session.get(SuppressionRule, rule_id)
        if rule is None or rule.removed_at is not None:
            raise FeedbackError(f"no active suppression rule #{rule_id}")
        rule.removed_by, rule.removed_at = actor, utcnow()
        session.add(rule)
        audit(session, actor, "suppression.remove", "suppression_rule", rule_id)
        session.commit()
        session.refresh(rule)
        session.expunge(rule)
        return rule


def list_rules(engine: Engine, school_id: str | None = None,
               include_removed: bool = False) -> list[SuppressionRule]:
    """Suppression rules, oldest first."""
    query = select(SuppressionRule).order_by(SuppressionRule.id)
    if school_id:
        query = query.where(SuppressionRule.school_id == school_id)
    if not include_removed:
        query = query.where(SuppressionRule.removed_at.is_(None))
    with Session(engine) as session:
        rules = session.exec(query).all()
        session.expunge_all()
        return list(rules)


@dataclass(frozen=True)
class Suppressions:
    """The active rules of one school, ready to test mentions against."""

    rules: tuple[SuppressionRule, ...]

    @classmethod
    def load(cls, session: Session, school_id: str) -> Suppressions:
        """Active rules for ``school_id``."""
        return cls(tuple(session.exec(select(SuppressionRule).where(
            SuppressionRule.school_id == school_id, SuppressionRule.removed_at.is_(None))).all()))

    def match(self, author: str | None, text: str) -> SuppressionRule | None:
        """The first rule that suppresses this mention, if any."""
        folded_text = fold(text)
        folded_author = fold(author or "").lstrip("@")
        for rule in self.rules:
            value = fold(rule.value)
            if rule.kind == "author" and folded_author and folded_author == value.lstrip("@"):
                return rule
            if rule.kind == "phrase" and value in folded_text:
                return rule
        return None


def export_examples(engine: Engine, out: Path) -> int:
    """Write feedback as JSON Lines in the labelled-data format; returns the count."""
    with Session(engine) as session:
        examples = session.exec(select(FeedbackExample).order_by(FeedbackExample.id)).all()
    with out.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({
                "text": example.text, "label": example.label, "subtype": None, "severity": None,
                "also_ok": [], "hard_negative": True, "register": "feedback",
                "source": f"false positive of a {example.predicted} alert, judged by staff",
            }, ensure_ascii=False) + "\n")
    return len(examples)
