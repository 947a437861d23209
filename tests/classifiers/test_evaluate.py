"""Evaluation metrics and `schoolwatch eval`."""
from __future__ import annotations

import json

import pytest

from classifiers.base import Category, Severity, Subtype
from classifiers.datasets import Example, load_jsonl
from classifiers.evaluate import compute_metrics, format_report, main

SG, DIS, REP, NONE = (Category.SAFEGUARDING, Category.DISPARAGING, Category.REPUTATIONAL,
                      Category.NONE)


def ex(label, subtype=None, severity=None, also_ok=(), hard=False) -> Example:
    return Example(text="t", label=label, subtype=subtype, severity=severity,
                   also_ok=tuple(also_ok), hard_negative=hard)


def test_metrics_by_hand() -> None:
    examples = [
        ex(SG, Subtype.SELF_HARM, Severity.HIGH),           # caught
        ex(SG, Subtype.SELF_HARM, Severity.MEDIUM),         # missed -> none
        ex(SG, Subtype.BULLYING, Severity.HIGH, also_ok=[DIS]),  # predicted DIS: accepted
        ex(DIS, severity=Severity.LOW),                     # caught
        ex(REP, severity=Severity.LOW),                     # predicted DIS: wrong
        ex(NONE),                                           # fine
        ex(NONE, hard=True),                                # false alarm (SG)
        ex(NONE, hard=True),                                # fine
    ]
    pred = [SG, NONE, DIS, DIS, DIS, NONE, SG, NONE]
    m = compute_metrics(examples, pred)
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    # Safeguarding: gold after also_ok = 2 items (1 hit, 1 miss); predicted SG twice (1 wrong).
    assert m["classes"]["safeguarding"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # Disparaging: gold = the DIS item and the also_ok item; predicted 3 times.
    assert m["classes"]["disparaging"]["precision"] == pytest.approx(2 / 3)
    assert m["classes"]["disparaging"]["recall"] == pytest.approx(1.0)
    assert m["classes"]["reputational"]["recall"] == 0.0
    assert m["classes"]["none"]["precision"] == pytest.approx(2 / 3)
    assert m["classes"]["none"]["recall"] == pytest.approx(2 / 3)
    f1s = [v["f1"] for v in m["classes"].values()]
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 4)
    assert m["safeguarding_recall"] == pytest.approx(2 / 3)
    assert m["safeguarding_recall_strict"] == pytest.approx(1 / 3)
    assert m["safeguarding_recall_by_subtype"] == {
        "bullying": {"recall": 1.0, "support": 1},
        "self_harm": {"recall": 0.5, "support": 2},
    }
    assert m["safeguarding_recall_high_severity"] == {"recall": 1.0, "support": 2}
    assert m["false_alarm_rate_none"] == {"rate": pytest.approx(1 / 3), "count": 1, "support": 3}
    assert m["false_alarm_rate_hard_negative"] == {"rate": 0.5, "count": 1, "support": 2}
    assert m["confusion"]["labels"] == ["safeguarding", "disparaging", "reputational", "none"]
    assert m["confusion"]["matrix"] == [
        [1, 1, 0, 1],
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [1, 0, 0, 2],
    ]
    report = format_report(m)
    assert "macro-F1" in report and "self_harm" in report and "hard negatives" in report


def test_no_hard_negatives_means_no_rate() -> None:
    m = compute_metrics([ex(NONE), ex(DIS, severity=Severity.LOW)], [NONE, DIS])
    assert m["false_alarm_rate_hard_negative"] is None
    assert m["macro_f1"] == pytest.approx(0.5)  # SG and REP have no support: F1 0


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError):
        compute_metrics([ex(NONE)], [])


def _write(path, rows) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def test_cli_json_with_the_transformer(tmp_path, capsys) -> None:
    data = tmp_path / "mini.jsonl"
    _write(data, [
        {"text": "i cant do this anymore, nobody would notice if i was gone",
         "label": "safeguarding", "subtype": "self_harm", "severity": "high"},
        {"text": "Lovely harvest festival assembly this morning, thank you Year 3",
         "label": "none", "hard_negative": False},
        {"text": "absolutely killed it at the concert", "label": "none", "hard_negative": True},
    ])
    assert main(["--data", str(data), "--classifier", "transformer", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == 3 and m["classifier"] == "transformer"
    assert set(m["classes"]) == {"safeguarding", "disparaging", "reputational", "none"}
    assert m["false_alarm_rate_hard_negative"]["support"] == 1
    assert "self_harm" in m["safeguarding_recall_by_subtype"]


def test_cli_text_report(tmp_path, capsys) -> None:
    data = tmp_path / "mini.jsonl"
    _write(data, [{"text": "the head is a useless liar", "label": "disparaging",
                   "severity": "medium", "also_ok": ["reputational"]}])
    assert main(["--data", str(data), "--classifier", "rules"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "confusion" in out


def test_cli_bad_input(tmp_path, capsys) -> None:
    assert main(["--data", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "spam"}\n')
    assert main(["--data", str(bad)]) == 2
    assert "unknown value 'spam'" in capsys.readouterr().err


def test_loader_reads_optional_fields(tmp_path) -> None:
    data = tmp_path / "x.jsonl"
    _write(data, [{"text": "a", "label": "safeguarding", "subtype": "grooming",
                   "severity": "high", "also_ok": ["disparaging"], "hard_negative": False,
                   "register": "tweet"}, {"text": "b", "label": "none"}])
    a, b = load_jsonl(data)
    assert a.subtype is Subtype.GROOMING and a.severity is Severity.HIGH
    assert a.also_ok == (DIS,) and a.accepts(DIS) and a.accepts(SG) and not a.accepts(NONE)
    assert b.subtype is None and not b.hard_negative
