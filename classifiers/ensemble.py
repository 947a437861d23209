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
    Thresholds,
    TransformerClassifier,
    TransformerConfig,
    model_reasons,
)

CONTEXT_VETOES: tuple[str, ...] = ("training", "fiction", "sport", "idiom")


class EnsembleConfig(TransformerConfig):
    """[classifier.options] for the ensemble: the transformer's options plus the rules'."""

    # Options for the rules classifier ([classifier.options.rules]).
    rules: dict[str, Any] = Field(default_factory=dict)
    # Categories a rule hit flags on its own; safeguarding because recall comes first.
    rule_categories: list[Category] = Field(default_factory=lambda: [Category.SAFEGUARDING])
    # Named rules contexts (rules.toml [context.X]) that make the model alone need a higher
    # score for a category no rule found: training notices, fiction, sport, idioms.
    context_vetoes: list[str] = Field(default_factory=lambda: list(CONTEXT_VETOES))
    # Per-category score the model needs inside such a context; unset ones come from the
    # head's calibration (and, without one, the ordinary threshold: no veto).
    context_thresholds: Thresholds = Field(default_factory=dict)


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


def context_holds(rule: Assessment, contexts: dict[str, str] | None) -> list[bool]:
    """Per scored category: a rules context matched and no rule found it, so the model's
    context threshold applies (the same test in training and in use)."""
    return [bool(contexts) and c not in rule.labels for c in SCORED_CATEGORIES]


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
        self.context_vetoes = tuple(cfg.context_vetoes)
        raised = self.model.calibrated_thresholds(
            "ensemble_context", overrides=cfg.context_thresholds, fallback=self.thresholds)
        # Never below the ordinary threshold: a context only ever asks for more.
        self.context_thresholds = {c: max(self.thresholds[c], raised[c]) for c in SCORED_CATEGORIES}

    def classify(self, items: Sequence[ClassifierInput]) -> list[Assessment]:
        """One Assessment per item, with the rule and model reasons that decided it."""
        if not items:
            return []
        by_rules = self.rules.classify(items)
        contexts = (self.rules.contexts(items, self.context_vetoes) if self.context_vetoes
                    else [{} for _ in items])
        by_model = self.model.score(items)
        return [self._combine(r, m, c) for r, m, c in zip(by_rules, by_model, contexts)]

    def limits(self, rule: Assessment, contexts: dict[str, str] | None) -> dict[Category, float]:
        """Per category, the score the model needs: higher in a context no rule contradicts."""
        limits = dict(self.thresholds)
        for c, held in zip(SCORED_CATEGORIES, context_holds(rule, contexts)):
            if held:
                limits[c] = self.context_thresholds[c]
        return limits

    def _combine(
        self, rule: Assessment, model: ModelScores, contexts: dict[str, str] | None = None
    ) -> Assessment:
        limits = self.limits(rule, contexts)
        model_flags = {c: model.probs[c] >= limits[c] for c in SCORED_CATEGORIES}
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
        held_back = [c for c in SCORED_CATEGORIES
                     if not model_flags[c] and model.probs[c] >= self.thresholds[c]]
        if held_back and contexts:
            name, quote = next(iter(contexts.items()))
            for c in held_back:
                reasons.append(f"context {name}: '{quote}' (model {c.value} "
                               f"{model.probs[c]:.2f} below {limits[c]:.2f} here)")
        if category is not Category.NONE and not model_flags[category]:
            reasons = [r for r in reasons if not r.startswith("model: none")]
            top = model.probs[category]
            limit = limits[category]
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
