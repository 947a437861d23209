"""Transformer classifier: a sentence encoder plus the trained head, or a fine-tuned model."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from classifiers.base import (
    SCORED_CATEGORIES,
    Assessment,
    Category,
    Classifier,
    ClassifierInput,
    Severity,
    Subtype,
    top_category,
)
from classifiers.encoder import (
    DEFAULT_MODEL,
    ModelLoadError,
    load_encoder,
    load_sequence_classifier,
    model_kind,
)
from classifiers.head import HEAD_PATH, Head

log = logging.getLogger(__name__)


def check_thresholds(value: dict[Category, float]) -> dict[Category, float]:
    """Per-category decision thresholds: scored categories only, each strictly in (0, 1)."""
    for category, threshold in value.items():
        if category is Category.NONE:
            raise ValueError("'none' has no threshold; it is what is left")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"{category.value}: threshold must be between 0 and 1")
    return value


# Config fields holding thresholds per category (ordinary ones, and the ensemble's in context).
Thresholds = Annotated[dict[Category, float], AfterValidator(check_thresholds)]


class TransformerConfig(BaseModel):
    """[classifier.options] for the transformer classifier."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # "default" (the packaged encoder and head), a local directory, or a hub id.
    model: str = DEFAULT_MODEL
    # A head.npz for an encoder model; the packaged head by default.
    head: str | None = None
    allow_download: bool = False
    batch_size: int = Field(32, ge=1, le=1024)
    max_length: int = Field(256, ge=8, le=512)
    # Per-category decision thresholds; unset ones come from the head's calibration.
    thresholds: Thresholds = Field(default_factory=dict)
    # For a sequence-classification model: its label -> "none", a category, a subtype
    # ("self_harm" or "safeguarding:self_harm") or "ignore".
    label_map: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class ModelScores:
    """What the model thinks of one text, before thresholds."""

    probs: dict[Category, float]
    subtype: Subtype | None
    subtype_score: float
    severity: Severity | None


def _map_label(label: str, target: str) -> tuple[Category, Subtype | None] | None:
    target = target.strip().lower()
    if target == "ignore":
        return None
    cat, _, sub = target.partition(":")
    if cat in {s.value for s in Subtype}:
        return Category.SAFEGUARDING, Subtype(cat)
    try:
        category = Category(cat)
    except ValueError:
        raise ModelLoadError(f"label_map[{label!r}]: unknown target {target!r}") from None
    return category, Subtype(sub) if sub else None


class _SequenceModel:
    """A fine-tuned sequence-classification model read through its label map."""

    def __init__(self, config: TransformerConfig) -> None:
        self.model = load_sequence_classifier(config.model, config.allow_download)
        self.targets: list[tuple[Category, Subtype | None] | None] = []
        unmapped = []
        for label in self.model.labels:
            target = config.label_map.get(label, label)
            try:
                self.targets.append(_map_label(label, target))
            except (ModelLoadError, ValueError):
                unmapped.append(label)
        if unmapped:
            raise ModelLoadError(
                f"model {config.model!r} has labels {unmapped} that are not in the taxonomy; "
                "map them with [classifier.options] label_map (to a category, a subtype "
                "or 'ignore')"
            )

    def scores(self, texts: list[str], batch_size: int, max_length: int) -> list[ModelScores]:
        probs = self.model.predict(texts, batch_size, max_length)
        combine = np.maximum if self.model.multi_label else np.add
        out = []
        for row in probs:
            cats = {c: 0.0 for c in SCORED_CATEGORIES}
            best_sub, best_p = None, 0.0
            for p, target in zip(row, self.targets):
                if target is None or target[0] is Category.NONE:
                    continue
                cats[target[0]] = float(combine(cats[target[0]], p))
                if target[1] is not None and p > best_p:
                    best_sub, best_p = target[1], float(p)
            out.append(ModelScores(cats, best_sub, best_p, None))
        return out


class _HeadModel:
    """The sentence encoder and the trained head."""

    def __init__(self, config: TransformerConfig) -> None:
        head_path = Path(config.head) if config.head else None
        if head_path is None and config.model != DEFAULT_MODEL:
            head_path = Path(config.model) / "head.npz"
        try:
            self.head = Head.load(head_path or HEAD_PATH)
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from None
        # The head's LoRA adapter (if any) is merged into the encoder's weights at load.
        self.encoder = load_encoder(config.model, config.allow_download, self.head.adapter)
        self.layers = self.head.layers
        if self.head.input_dim != self.encoder.dim * len(self.layers):
            raise ModelLoadError(
                f"head expects {self.head.input_dim}-d inputs, encoder gives "
                f"{self.encoder.dim} x {len(self.layers)} layers"
            )

    def scores(self, texts: list[str], batch_size: int, max_length: int) -> list[ModelScores]:
        vectors = self.encoder.encode(texts, batch_size, max_length, self.layers)
        out = self.head.predict(vectors, texts)
        return [
            ModelScores(
                probs={c: float(out.categories[i, j]) for j, c in enumerate(SCORED_CATEGORIES)},
                subtype=out.subtype(i),
                subtype_score=float(out.subtypes[i].max()),
                severity=out.severity(i),
            )
            for i in range(len(texts))
        ]


def model_reasons(s: ModelScores, flags: dict[Category, bool]) -> list[str]:
    """Readable reasons: one per flagged category, or the top score when nothing is."""
    reasons = []
    for c in SCORED_CATEGORIES:
        if flags.get(c):
            detail = f" ({s.subtype.value})" if c is Category.SAFEGUARDING and s.subtype else ""
            reasons.append(f"model: {c.value} {s.probs[c]:.2f}{detail}")
    if not reasons:
        top = max(SCORED_CATEGORIES, key=lambda c: s.probs[c])
        reasons.append(f"model: none (highest {top.value} {s.probs[top]:.2f})")
    return reasons


class TransformerClassifier(Classifier):
    """Scores each category with a transformer; thresholds turn scores into a verdict."""

    name = "transformer"
    Config = TransformerConfig

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__(config)
        cfg: TransformerConfig = self.config  # type: ignore[assignment]
        self.kind = model_kind(cfg.model, cfg.allow_download)
        self._model: _HeadModel | _SequenceModel = (
            _HeadModel(cfg) if self.kind == "encoder" else _SequenceModel(cfg)
        )
        self.thresholds = self.calibrated_thresholds("model")

    @property
    def head(self) -> Head | None:
        """The trained head, when the model is an encoder."""
        return self._model.head if isinstance(self._model, _HeadModel) else None

    def calibrated_thresholds(self, kind: str, overrides: Mapping[Category, float] | None = None,
                              fallback: Mapping[Category, float] | None = None
                              ) -> dict[Category, float]:
        """The head's stored thresholds of ``kind`` (``fallback``, or 0.5, where it has none),
        overridden by ``overrides`` (the config's ``thresholds`` unless given)."""
        head = self.head
        base = head.thresholds(kind, fallback) if head else {
            c: fallback[c] if fallback else 0.5 for c in SCORED_CATEGORIES}
        chosen = self.config.thresholds if overrides is None else overrides  # type: ignore[attr-defined]
        return {**base, **chosen}

    def score(self, items: Sequence[ClassifierInput]) -> list[ModelScores]:
        """Raw model scores for a batch, in order."""
        if not items:
            return []
        cfg: TransformerConfig = self.config  # type: ignore[assignment]
        texts = [item.full_text for item in items]
        return self._model.scores(texts, cfg.batch_size, cfg.max_length)

    def classify(self, items: Sequence[ClassifierInput]) -> list[Assessment]:
        """One Assessment per item: highest-priority category over its threshold."""
        out = []
        for s in self.score(items):
            flags = {c: s.probs[c] >= self.thresholds[c] for c in SCORED_CATEGORIES}
            category = top_category(flags)
            flagged = category is not Category.NONE
            out.append(Assessment(
                category=category,
                severity=(s.severity or Severity.MEDIUM) if flagged else None,
                subtype=s.subtype if category is Category.SAFEGUARDING else None,
                scores={c.value: round(p, 4) for c, p in s.probs.items()},
                reasons=model_reasons(s, flags),
                classifier=self.name,
            ))
        return out
