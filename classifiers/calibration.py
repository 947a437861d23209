"""Threshold calibration on out-of-fold scores: recall first for safeguarding, then F1."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from classifiers.base import CATEGORY_PRIORITY as PRIORITY
from classifiers.base import Category, Severity
from classifiers.datasets import Example
from classifiers.ensemble import decide


def macro_f1(pred: np.ndarray, label: np.ndarray, accepted: np.ndarray) -> float:
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
class Truth:
    """What calibration needs to know of each example, as arrays."""

    label: np.ndarray  # index into PRIORITY
    accepted: np.ndarray  # (n, 4) label or also_ok
    is_sg: np.ndarray
    is_high: np.ndarray
    is_none: np.ndarray

    @classmethod
    def of(cls, examples: Sequence[Example]) -> Truth:
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
    truth = Truth.of(examples)
    caught_by_rule = rule_hits[:, 0] if rule_hits is not None else np.zeros(len(examples), bool)
    grid = sg_grid(sg_max)
    t_sg = float(grid[0])
    for t in grid:
        if truth.recall_ok((probs[:, 0] >= t) | caught_by_rule, target_recall, high_recall):
            t_sg = float(t)
    t_dis, t_rep = _other_thresholds(probs, truth, t_sg, rule_hits, f1_tolerance)
    return {"safeguarding": t_sg, "disparaging": t_dis, "reputational": t_rep}


def _other_thresholds(
    probs: np.ndarray, truth: Truth, t_sg: float, rule_hits: np.ndarray | None,
    f1_tolerance: float, raised: Sequence[float] | None = None,
    in_context: np.ndarray | None = None,
) -> tuple[float, float]:
    rows = []
    for t_dis in GRID:
        for t_rep in GRID:
            th = row_thresholds((t_sg, t_dis, t_rep), raised, in_context)
            pred = decide(probs, th, rule_hits)
            rows.append((macro_f1(pred, truth.label, truth.accepted),
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
    truth = Truth.of(examples)
    th = [base["safeguarding"], base["disparaging"], base["reputational"]]
    raised = list(th)

    def score(th_: Sequence[float], raised_: Sequence[float]) -> tuple[float, float]:
        pred = decide(probs, row_thresholds(th_, raised_, in_context), rule_hits)
        return macro_f1(pred, truth.label, truth.accepted), truth.false_alarms(pred)

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
    truth = Truth.of(examples)
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
            "macro_f1": round(macro_f1(pred, truth.label, truth.accepted), 4),
        })
    return sorted({r["safeguarding_threshold"]: r for r in rows}.values(),
                  key=lambda r: r["safeguarding_threshold"])
