"""Ensemble: the auditable rules OR the transformer, with calibrated thresholds per category."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from classifiers.base import (
    SCORED_CATEGORIES,
    Assessment,
    Category,
    Classifier,
    ClassifierInput,
    Severity,
    top_category,
)
from classifiers.transformer import (
    ModelScores,
    TransformerClassifier,
    TransformerConfig,
    model_reasons,
)


class EnsembleConfig(TransformerConfig):
    """[classifier.options] for the ensemble: the transformer's options plus the rules'."""

    # Options for the rules classifier ([classifier.options.rules]).
    rules: dict[str, Any] = Field(default_factory=dict)
    # Categories a rule hit flags on its own; safeguarding because recall comes first.
    rule_categories: list[Category] = Field(default_factory=lambda: [Category.SAFEGUARDING])


def decide(
    probs: np.ndarray, thresholds: Sequence[float], rule_hits: np.ndarray | None = None
) -> np.ndarray:
    """Index into CATEGORY_PRIORITY per row: first category over threshold or hit by a rule."""
    flags = probs >= np.asarray(thresholds, dtype=probs.dtype)
    if rule_hits is not None:
        flags = flags | rule_hits
    # argmax finds the first True, i.e. the highest priority; rows with none get NONE.
    return np.where(flags.any(axis=1), flags.argmax(axis=1), len(SCORED_CATEGORIES))


def rule_hit_matrix(
    assessments: Sequence[Assessment], rule_categories: Sequence[Category]
) -> np.ndarray:
    """(n, 3) booleans: the rules flagged this category and it is one rules may decide."""
    out = np.zeros((len(assessments), len(SCORED_CATEGORIES)), dtype=bool)
    for i, a in enumerate(assessments):
        if a.category in rule_categories and a.category is not Category.NONE:
            out[i, SCORED_CATEGORIES.index(a.category)] = True
    return out


def _max_severity(*values: Severity | None) -> Severity | None:
    present = [v for v in values if v is not None]
    return max(present, key=lambda s: s.rank) if present else None


class EnsembleClassifier(Classifier):
    """Rules OR model per category, then safeguarding > disparaging > reputational > none."""

    name = "ensemble"
    Config = EnsembleConfig

    def __init__(self, config: EnsembleConfig | None = None) -> None:
        super().__init__(config)
        from classifiers.rules import RulesClassifier

        cfg: EnsembleConfig = self.config  # type: ignore[assignment]
        model_options = {k: getattr(cfg, k) for k in TransformerConfig.model_fields}
        self.model = TransformerClassifier(TransformerConfig(**model_options))
        self.rules = RulesClassifier(RulesClassifier.Config.model_validate(cfg.rules))
        self.thresholds = self.model.calibrated_thresholds("ensemble")
        self.rule_categories = frozenset(cfg.rule_categories)

    def classify(self, items: Sequence[ClassifierInput]) -> list[Assessment]:
        """One Assessment per item, with the rule and model reasons that decided it."""
        if not items:
            return []
        by_rules = self.rules.classify(items)
        by_model = self.model.score(items)
        return [self._combine(r, m) for r, m in zip(by_rules, by_model)]

    def _combine(self, rule: Assessment, model: ModelScores) -> Assessment:
        model_flags = {c: model.probs[c] >= self.thresholds[c] for c in SCORED_CATEGORIES}
        rule_flag = rule.category if rule.category in self.rule_categories else None
        flags = {c: model_flags[c] or c == rule_flag for c in SCORED_CATEGORIES}
        category = top_category(flags)
        reasons: list[str] = []
        severity = subtype = None
        if category is not Category.NONE:
            by_rule = rule.category is category
            by_model = model_flags[category]
            if by_rule:
                reasons.extend(rule.reasons)
            severity = _max_severity(
                rule.severity if by_rule else None,
                (model.severity or Severity.MEDIUM) if by_model else None,
            )
            if category is Category.SAFEGUARDING:
                # A rule names the phrase it matched, so its subtype is the auditable one.
                subtype = rule.subtype if by_rule and rule.subtype else model.subtype
        reasons.extend(model_reasons(model, model_flags))
        if category is not Category.NONE and not model_flags[category]:
            reasons = [r for r in reasons if not r.startswith("model: none")]
            top = model.probs[category]
            limit = self.thresholds[category]
            reasons.append(f"model: {category.value} {top:.2f} (below {limit:.2f})")
        scores = {c.value: round(p, 4) for c, p in model.probs.items()}
        if rule.category is not Category.NONE:
            scores[f"rules:{rule.category.value}"] = 1.0
        return Assessment(
            category=category,
            severity=severity,
            subtype=subtype,
            scores=scores,
            reasons=reasons,
            classifier=self.name,
        )
