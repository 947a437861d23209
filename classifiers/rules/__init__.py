"""The rules classifier: an auditable lexicon of patterns, kept as data in rules.toml."""
from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from classifiers.base import (
    CATEGORY_PRIORITY,
    SCORED_CATEGORIES,
    Assessment,
    Category,
    Classifier,
    ClassifierInput,
    top_category,
)
from classifiers.rules.engine import Hit, RuleSet, RulesError, parse_rules
from classifiers.rules.text import normalise

__all__ = ["RulesClassifier", "RulesConfig", "RulesError", "load_rules"]

BUILTIN_SOURCE = "rules.toml"


class RulesConfig(BaseModel):
    """Options for [classifier.options] when the classifier is "rules"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A school's own TOML rules, added to the built-in ones (same format as rules.toml).
    extra_rules: str | None = None


@cache
def _builtin_text() -> str:
    return files(__name__).joinpath(BUILTIN_SOURCE).read_text(encoding="utf-8")


@cache
def _builtin_rules() -> RuleSet:
    return parse_rules([(BUILTIN_SOURCE, _builtin_text())])


def load_rules(extra_rules: str | Path | None = None) -> RuleSet:
    """The built-in rules, plus a school's extra rules file when one is given."""
    if extra_rules is None:
        return _builtin_rules()
    path = Path(extra_rules).expanduser()
    try:
        extra_text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read extra rules: {exc.strerror or exc}") from None
    return parse_rules([(BUILTIN_SOURCE, _builtin_text()), (str(path), extra_text)])


def _strength(hit: Hit) -> tuple[int, int, float, int]:
    return (
        CATEGORY_PRIORITY.index(hit.rule.category),
        -hit.severity.rank,
        -hit.rule.weight,
        hit.rule.order,
    )


def assess(rules: RuleSet, text: str, classifier: str = "rules") -> Assessment:
    """Match one text and turn the hits into an Assessment with readable reasons."""
    found = rules.match(normalise(text))
    hits = sorted(found.hits, key=_strength)
    scores = {
        str(category): max((h.rule.weight for h in hits if h.rule.category is category), default=0.0)
        for category in SCORED_CATEGORIES
    }
    category = top_category({c: scores[str(c)] > 0 for c in SCORED_CATEGORIES})
    if category is Category.NONE:
        return Assessment(category=category, scores=scores, classifier=classifier)
    strongest = next(h for h in hits if h.rule.category is category)
    reasons = [f"rule {h.rule.id}: '{h.quote}'" for h in hits]
    reasons += [f"rule {booster}: '{quote}'" for booster, quote in found.boosts.items()]
    return Assessment(
        category=category,
        severity=strongest.severity,
        subtype=strongest.rule.subtype,
        scores=scores,
        reasons=reasons,
        classifier=classifier,
        labels=tuple(c for c in SCORED_CATEGORIES if scores[str(c)] > 0),
    )


class RulesClassifier(Classifier):
    """Flags mentions with the patterns in rules.toml (and a school's extra rules)."""

    name = "rules"
    Config = RulesConfig

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.rules = load_rules(self.config.extra_rules)  # type: ignore[attr-defined]

    def classify(self, items: Sequence[ClassifierInput]) -> list[Assessment]:
        """Return one Assessment per item, in order."""
        return [assess(self.rules, item.full_text, self.name) for item in items]

    def contexts(
        self, items: Sequence[ClassifierInput], names: Sequence[str] | None = None
    ) -> list[dict[str, str]]:
        """Per item, {context name: quote} of the rules' named contexts found in its text."""
        return [self.rules.context_matches(normalise(item.full_text), names) for item in items]
