"""The classifier contract and the taxonomy it speaks."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Category(StrEnum):
    """What a mention is, in the order of priority when several apply."""

    SAFEGUARDING = "safeguarding"
    DISPARAGING = "disparaging"
    REPUTATIONAL = "reputational"
    NONE = "none"


# Highest priority first: a post that is both a threat and an insult is safeguarding.
CATEGORY_PRIORITY: tuple[Category, ...] = (
    Category.SAFEGUARDING,
    Category.DISPARAGING,
    Category.REPUTATIONAL,
    Category.NONE,
)
SCORED_CATEGORIES: tuple[Category, ...] = CATEGORY_PRIORITY[:3]


class Severity(StrEnum):
    """How urgent a flagged mention is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Order low < medium < high."""
        return SEVERITY_ORDER.index(self)


SEVERITY_ORDER: tuple[Severity, ...] = (Severity.LOW, Severity.MEDIUM, Severity.HIGH)


class Subtype(StrEnum):
    """Kinds of safeguarding concern (KCSIE and the Prevent duty)."""

    VIOLENCE_THREAT = "violence_threat"
    SELF_HARM = "self_harm"
    GROOMING = "grooming"
    SEXUAL_CONTENT = "sexual_content"
    BULLYING = "bullying"
    EXTREMISM = "extremism"
    ABUSE_DISCLOSURE = "abuse_disclosure"
    CHILD_PRIVACY = "child_privacy"


class Assessment(BaseModel):
    """A classifier's verdict on one mention, with reasons a person can read."""

    model_config = ConfigDict(frozen=True)

    category: Category
    severity: Severity | None = None
    subtype: Subtype | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    classifier: str = ""
    # Every category that applies (multi-label); the primary one when left empty.
    labels: tuple[Category, ...] = ()

    @model_validator(mode="after")
    def _labels_include_category(self) -> Assessment:
        if self.category is not Category.NONE and self.category not in self.labels:
            object.__setattr__(self, "labels", (self.category, *self.labels))
        return self

    @property
    def flagged(self) -> bool:
        """True when someone should hear about it."""
        return self.category is not Category.NONE

    def restricted_to(self, allowed: Sequence[Category]) -> Assessment:
        """The same verdict with only ``allowed`` categories assessed (per-source limits)."""
        if self.category in allowed or self.category is Category.NONE:
            kept = tuple(c for c in self.labels if c in allowed)
            return self.model_copy(update={"labels": kept})
        remaining = top_category({c: c in allowed for c in self.labels})
        return Assessment(
            category=remaining,
            severity=self.severity if remaining is not Category.NONE else None,
            scores={k: v for k, v in self.scores.items() if k in allowed},
            reasons=[r for r in self.reasons if not _mentions_any(r, _words_of_excluded(allowed))],
            classifier=self.classifier,
            labels=tuple(c for c in self.labels if c in allowed),
        )


class ClassifierInput(BaseModel):
    """The text to classify and the little context a classifier may use."""

    model_config = ConfigDict(frozen=True)

    text: str
    title: str | None = None
    platform: str = ""

    @property
    def full_text(self) -> str:
        """Title and body as one string, title first."""
        if self.title and not self.text.startswith(self.title):
            return f"{self.title}\n{self.text}" if self.text else self.title
        return self.text


class Classifier(ABC):
    """Assesses mentions in batches; load models once in ``__init__``."""

    name: str = ""
    # The pydantic model that validates this classifier's [classifier.options] table.
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def classify(self, items: Sequence[ClassifierInput]) -> list[Assessment]:
        """Return one Assessment per item, in order."""


def top_category(flags: dict[Category, bool]) -> Category:
    """The highest-priority category whose flag is set, else NONE."""
    for category in CATEGORY_PRIORITY[:3]:
        if flags.get(category):
            return category
    return Category.NONE


def _words_of_excluded(allowed: Sequence[Category]) -> tuple[str, ...]:
    excluded = [c.value for c in SCORED_CATEGORIES if c not in allowed]
    if Category.SAFEGUARDING not in allowed:
        excluded += [s.value for s in Subtype]
    return tuple(excluded)


def _mentions_any(reason: str, words: tuple[str, ...]) -> bool:
    return any(word in reason for word in words)
