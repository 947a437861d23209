"""`schoolwatch eval`: score a classifier on a labelled JSONL file."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from classifiers.base import CATEGORY_PRIORITY, Assessment, Category, Classifier, ClassifierInput
from classifiers.datasets import DataError, Example, load_jsonl

LABELS: tuple[str, ...] = tuple(c.value for c in CATEGORY_PRIORITY)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _recall(rows: list[tuple[Example, Category]]) -> dict[str, Any]:
    hit = sum(1 for ex, pred in rows if ex.accepts(pred))
    return {"recall": _ratio(hit, len(rows)), "support": len(rows)}


def compute_metrics(examples: Sequence[Example], predicted: Sequence[Category]) -> dict[str, Any]:
    """Per-class P/R/F1, macro-F1, safeguarding recall, false alarms and a confusion matrix."""
    if len(examples) != len(predicted):
        raise ValueError("one prediction per example")
    pairs = list(zip(examples, (Category(p) for p in predicted)))
    # An also_ok match is scored as if the label had been the predicted class.
    gold = [pred if ex.accepts(pred) else ex.label for ex, pred in pairs]
    classes = {}
    for c in CATEGORY_PRIORITY:
        tp = sum(1 for g, (_, p) in zip(gold, pairs) if g == c and p == c)
        fp = sum(1 for g, (_, p) in zip(gold, pairs) if g != c and p == c)
        fn = sum(1 for g, (_, p) in zip(gold, pairs) if g == c and p != c)
        classes[c.value] = {**_prf(tp, fp, fn), "support": sum(1 for g in gold if g == c)}
    sg = [(ex, p) for ex, p in pairs if ex.label == Category.SAFEGUARDING]
    by_subtype = {}
    for sub in sorted({ex.subtype.value for ex, _ in sg if ex.subtype}):
        of_subtype = [(ex, p) for ex, p in sg if ex.subtype and ex.subtype.value == sub]
        by_subtype[sub] = _recall(of_subtype)
    high = [(ex, p) for ex, p in sg if ex.severity is not None and ex.severity.value == "high"]
    none = [(ex, p) for ex, p in pairs if ex.label == Category.NONE]
    hard = [(ex, p) for ex, p in none if ex.hard_negative]
    false_none = sum(1 for ex, p in none if not ex.accepts(p))
    false_hard = sum(1 for ex, p in hard if not ex.accepts(p))
    matrix = [[0] * len(LABELS) for _ in LABELS]
    for ex, p in pairs:
        matrix[LABELS.index(ex.label.value)][LABELS.index(p.value)] += 1
    return {
        "n": len(pairs),
        "accuracy": _ratio(sum(1 for ex, p in pairs if ex.accepts(p)), len(pairs)),
        "classes": classes,
        "macro_f1": sum(v["f1"] for v in classes.values()) / len(classes),
        "safeguarding_recall": _recall(sg)["recall"],
        "safeguarding_recall_strict": _ratio(
            sum(1 for _, p in sg if p == Category.SAFEGUARDING), len(sg)
        ),
        "safeguarding_recall_by_subtype": by_subtype,
        "safeguarding_recall_high_severity": _recall(high),
        "false_alarm_rate_none": {
            "rate": _ratio(false_none, len(none)), "count": false_none, "support": len(none)
        },
        "false_alarm_rate_hard_negative": {
            "rate": _ratio(false_hard, len(hard)), "count": false_hard, "support": len(hard)
        } if hard else None,
        "confusion": {"labels": list(LABELS), "rows": "label", "columns": "predicted",
                      "matrix": matrix},
    }


def classify_examples(
    classifier: Classifier, examples: Sequence[Example], batch_size: int = 256
) -> list[Assessment]:
    """Run ``classifier`` over the examples in batches."""
    out: list[Assessment] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out.extend(classifier.classify([ClassifierInput(text=ex.text) for ex in chunk]))
    return out


def evaluate(classifier: Classifier, examples: Sequence[Example]) -> dict[str, Any]:
    """Metrics for ``classifier`` on ``examples``."""
    assessments = classify_examples(classifier, examples)
    return compute_metrics(examples, [a.category for a in assessments])


def evaluate_file(classifier: Classifier, path: Path | str) -> dict[str, Any]:
    """Metrics for ``classifier`` on a labelled JSONL file."""
    metrics = evaluate(classifier, load_jsonl(path))
    metrics["data"] = str(path)
    metrics["classifier"] = classifier.name
    return metrics


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.3f}"


def format_report(m: dict[str, Any]) -> str:
    """The metrics as a plain-text report."""
    lines = []
    if "data" in m:
        lines.append(f"data: {m['data']}  classifier: {m.get('classifier', '?')}  n={m['n']}")
    lines.append(f"{'class':<14}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for name, v in m["classes"].items():
        lines.append(
            f"{name:<14}{_fmt(v['precision']):>10}{_fmt(v['recall']):>8}{_fmt(v['f1']):>8}"
            f"{v['support']:>9}"
        )
    lines.append(f"macro-F1 (4 classes): {_fmt(m['macro_f1'])}   accuracy: {_fmt(m['accuracy'])}")
    lines.append(
        f"safeguarding recall: {_fmt(m['safeguarding_recall'])} "
        f"(strict, only 'safeguarding' accepted: {_fmt(m['safeguarding_recall_strict'])})"
    )
    for sub, v in m["safeguarding_recall_by_subtype"].items():
        lines.append(f"  {sub:<18}{_fmt(v['recall'])}  (n={v['support']})")
    hs = m["safeguarding_recall_high_severity"]
    lines.append(f"  {'high severity':<18}{_fmt(hs['recall'])}  (n={hs['support']})")
    fa = m["false_alarm_rate_none"]
    lines.append(f"false-alarm rate on none: {_fmt(fa['rate'])} ({fa['count']}/{fa['support']})")
    hn = m["false_alarm_rate_hard_negative"]
    if hn:
        lines.append(
            f"false-alarm rate on hard negatives: {_fmt(hn['rate'])} "
            f"({hn['count']}/{hn['support']})"
        )
    labels = m["confusion"]["labels"]
    lines.append("confusion (rows: label, columns: predicted)")
    lines.append(" " * 14 + "".join(f"{x[:12]:>14}" for x in labels))
    for name, row in zip(labels, m["confusion"]["matrix"]):
        lines.append(f"{name:<14}" + "".join(f"{v:>14}" for v in row))
    return "\n".join(lines)


def load_classifier(name: str, options: dict[str, Any] | None = None) -> Classifier:
    """Instantiate an installed classifier plugin by name with validated options."""
    found = {ep.name: ep for ep in entry_points(group="schoolwatch.classifiers")}
    if name not in found:
        raise LookupError(f"unknown classifier {name!r}; known: {', '.join(sorted(found))}")
    cls = found[name].load()
    return cls(cls.Config.model_validate(options or {}))


def _option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `schoolwatch eval`."""
    p = argparse.ArgumentParser(
        prog="schoolwatch eval", description="Score a classifier on a labelled JSONL file."
    )
    p.add_argument("--data", required=True, type=Path, help="JSONL with text and label per line")
    p.add_argument("--classifier", default="ensemble", help="plugin name (default: ensemble)")
    p.add_argument("--model", help="options.model: 'default', a local path or a hub id")
    p.add_argument("--head", help="options.head: path to a head.npz")
    p.add_argument(
        "--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
        help="another classifier option; VALUE is parsed as JSON when it can be",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the metrics; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    options = dict(args.option)
    if args.model:
        options["model"] = args.model
    if args.head:
        options["head"] = args.head
    try:
        examples = load_jsonl(args.data)
    except (OSError, DataError) as exc:
        print(f"schoolwatch eval: {exc}", file=sys.stderr)
        return 2
    if not examples:
        print(f"schoolwatch eval: {args.data} has no examples", file=sys.stderr)
        return 2
    try:
        classifier = load_classifier(args.classifier, options)
    except (LookupError, ValueError, RuntimeError) as exc:
        # pydantic's ValidationError is a ValueError; ModelLoadError a RuntimeError.
        print(f"schoolwatch eval: {exc}", file=sys.stderr)
        return 2
    metrics = evaluate(classifier, examples)
    metrics["data"] = str(args.data)
    metrics["classifier"] = classifier.name
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
