"""The ensemble: rules OR model, priority, reasons, and posts it must and must not flag."""
from __future__ import annotations

import re

import numpy as np
import pytest

from classifiers.base import Assessment, Category, ClassifierInput, Severity, Subtype
from classifiers.ensemble import EnsembleClassifier, EnsembleConfig, decide
from classifiers.transformer import ModelScores
from tests.classifiers.cases import HARD_NEGATIVES, MUST_FLAG

SG, DIS, REP, NONE = (Category.SAFEGUARDING, Category.DISPARAGING, Category.REPUTATIONAL,
                      Category.NONE)


@pytest.fixture(scope="module")
def ens() -> EnsembleClassifier:
    return EnsembleClassifier()


def scores(sg: float, dis: float, rep: float, subtype=Subtype.SELF_HARM,
           severity=Severity.MEDIUM) -> ModelScores:
    return ModelScores({SG: sg, DIS: dis, REP: rep}, subtype, 0.8, severity)


def rule(category: Category, reason: str = "", subtype=None, severity=None) -> Assessment:
    return Assessment(category=category, subtype=subtype, severity=severity,
                      reasons=[reason] if reason else [], classifier="rules")


def test_decide_follows_priority() -> None:
    probs = np.array([
        [0.9, 0.9, 0.9],   # all three: safeguarding wins
        [0.1, 0.9, 0.9],   # disparaging beats reputational
        [0.1, 0.1, 0.9],
        [0.1, 0.1, 0.1],
    ], dtype=np.float32)
    assert decide(probs, [0.5, 0.5, 0.5]).tolist() == [0, 1, 2, 3]
    hits = np.zeros((4, 3), dtype=bool)
    hits[3, 0] = True
    assert decide(probs, [0.5, 0.5, 0.5], hits).tolist() == [0, 1, 2, 0]


def test_priority_safeguarding_over_disparaging_over_reputational(ens) -> None:
    t = ens.thresholds
    hi = {c: min(0.99, t[c] + 0.01) for c in t}
    lo = {c: max(0.0, t[c] - 0.01) for c in t}
    assert ens._combine(rule(NONE), scores(hi[SG], hi[DIS], hi[REP])).category is SG
    assert ens._combine(rule(NONE), scores(lo[SG], hi[DIS], hi[REP])).category is DIS
    assert ens._combine(rule(NONE), scores(lo[SG], lo[DIS], hi[REP])).category is REP
    assert ens._combine(rule(NONE), scores(lo[SG], lo[DIS], lo[REP])).category is NONE


def test_a_safeguarding_rule_flags_even_when_the_model_does_not(ens) -> None:
    r = rule(SG, "rule self_harm: 'can't do this anymore'", Subtype.SELF_HARM, Severity.HIGH)
    out = ens._combine(r, scores(0.01, 0.9, 0.01, subtype=Subtype.BULLYING))
    assert out.category is SG
    assert out.subtype is Subtype.SELF_HARM  # the rule's subtype: it names what it matched
    assert out.severity is Severity.HIGH
    assert out.reasons[0] == "rule self_harm: 'can't do this anymore'"
    # The model's own view stays readable: what it flagged and how far below threshold it was.
    assert any(x.startswith("model: disparaging 0.90") for x in out.reasons)
    assert any(re.fullmatch(r"model: safeguarding 0\.01 \(below 0\.\d\d\)", x) for x in out.reasons)
    assert out.scores["rules:safeguarding"] == 1.0


def test_model_reason_names_score_and_subtype(ens) -> None:
    out = ens._combine(rule(NONE), scores(0.91, 0.0, 0.0, subtype=Subtype.SELF_HARM))
    assert out.category is SG
    assert out.reasons == ["model: safeguarding 0.91 (self_harm)"]
    assert out.subtype is Subtype.SELF_HARM and out.severity is Severity.MEDIUM


def test_severity_is_the_higher_of_rule_and_model(ens) -> None:
    r = rule(SG, "rule violence_threat: 'knife'", Subtype.VIOLENCE_THREAT, Severity.LOW)
    out = ens._combine(r, scores(0.99, 0.0, 0.0, Subtype.VIOLENCE_THREAT, Severity.HIGH))
    assert out.severity is Severity.HIGH
    assert out.reasons[0].startswith("rule violence_threat:")
    assert out.reasons[1] == "model: safeguarding 0.99 (violence_threat)"


def test_rules_for_other_categories_do_not_decide_alone_by_default(ens) -> None:
    out = ens._combine(rule(DIS, "rule insult: 'useless'", severity=Severity.LOW),
                       scores(0.0, 0.0, 0.0))
    assert out.category is NONE and out.severity is None
    rules_too = EnsembleClassifier(EnsembleConfig(rule_categories=[SG, DIS]))
    out = rules_too._combine(rule(DIS, "rule insult: 'useless'", severity=Severity.LOW),
                             scores(0.0, 0.0, 0.0))
    assert out.category is DIS and out.reasons[0] == "rule insult: 'useless'"


def test_thresholds_from_config_override_the_calibrated_ones() -> None:
    ens = EnsembleClassifier(EnsembleConfig(thresholds={"reputational": 0.9}))
    assert ens.thresholds[REP] == 0.9
    assert ens.thresholds[SG] == ens.model.head.thresholds("ensemble")[SG]


def test_hard_negatives_are_not_flagged(ens) -> None:
    out = ens.classify([ClassifierInput(text=t) for t in HARD_NEGATIVES])
    flagged = [(t, a.category.value, a.reasons) for t, a in zip(HARD_NEGATIVES, out) if a.flagged]
    assert flagged == []


def test_must_flag_posts_are_flagged(ens) -> None:
    texts = [t for t, _ in MUST_FLAG]
    out = ens.classify([ClassifierInput(text=t) for t in texts])
    wrong = [(t, a.category.value, a.reasons) for (t, ok), a in zip(MUST_FLAG, out)
             if a.category.value not in ok]
    assert wrong == []
    for a in out:
        assert a.severity is not None and a.reasons
        assert all(r.startswith(("rule ", "model: ")) for r in a.reasons)


def test_batch_results_match_single_calls(ens) -> None:
    texts = [HARD_NEGATIVES[0], MUST_FLAG[0][0], MUST_FLAG[6][0]]
    batch = ens.classify([ClassifierInput(text=t) for t in texts])
    single = [ens.classify([ClassifierInput(text=t)])[0] for t in texts]
    assert [a.category for a in batch] == [a.category for a in single]
    assert ens.classify([]) == []


def test_registered_as_a_plugin() -> None:
    from monitor import registry

    assert registry.load(registry.CLASSIFIERS, "ensemble") is EnsembleClassifier


def test_config_takes_transformer_and_rules_options() -> None:
    cfg = EnsembleConfig.model_validate(
        {"model": "default", "batch_size": 16, "rules": {}, "thresholds": {"safeguarding": 0.3}}
    )
    assert cfg.batch_size == 16 and cfg.thresholds[SG] == 0.3
    with pytest.raises(ValueError):
        EnsembleConfig.model_validate({"rule_categories": ["nonsense"]})


def test_a_context_asks_more_of_the_model_alone() -> None:
    ens = EnsembleClassifier(EnsembleConfig(
        thresholds={"safeguarding": 0.2, "disparaging": 0.3, "reputational": 0.3},
        context_thresholds={"safeguarding": 0.8, "disparaging": 0.3, "reputational": 0.9},
    ))
    training = {"training": "prevent training"}
    s = scores(0.05, 0.0, 0.59)
    assert ens._combine(rule(NONE), s).category is REP
    out = ens._combine(rule(NONE), s, training)
    assert out.category is NONE
    assert "context training: 'prevent training' (model reputational 0.59 below 0.90 here)" in (
        out.reasons)
    # A high enough score still flags; disparaging's context threshold is its ordinary one.
    assert ens._combine(rule(NONE), scores(0.85, 0.0, 0.0), training).category is SG
    assert ens._combine(rule(NONE), scores(0.0, 0.35, 0.0), training).category is DIS
    # A rule that found the category lifts the veto for it (and a safeguarding rule decides).
    rep_rule = Assessment(category=REP, severity=Severity.LOW, reasons=["rule x: 'y'"],
                          classifier="rules")
    assert ens._combine(rep_rule, s, training).category is REP
    sg_rule = rule(SG, "rule self_harm: 'kms'", Subtype.SELF_HARM, Severity.MEDIUM)
    out = ens._combine(sg_rule, scores(0.5, 0.0, 0.0), training)
    assert out.category is SG and out.reasons[0] == "rule self_harm: 'kms'"
    assert "model: safeguarding 0.50 (self_harm)" in out.reasons


def test_context_thresholds_never_go_below_the_ordinary_ones() -> None:
    ens = EnsembleClassifier(EnsembleConfig(thresholds={"safeguarding": 0.5},
                                            context_thresholds={"safeguarding": 0.1}))
    assert ens.context_thresholds[SG] == 0.5
    # Scores between the two thresholds: with vetoes the training context holds them back,
    # and with context_vetoes = [] nothing does.
    low = {"safeguarding": 0.001, "disparaging": 0.001, "reputational": 0.001}
    high = {"safeguarding": 0.999, "disparaging": 0.999, "reputational": 0.999}
    item = ClassifierInput(text="Staff at Larchwood completed their Prevent training today")
    vetoed = EnsembleClassifier(EnsembleConfig(thresholds=low, context_thresholds=high))
    assert any(r.startswith("context ") for r in vetoed.classify([item])[0].reasons)
    plain = EnsembleClassifier(EnsembleConfig(thresholds=low, context_thresholds=high,
                                              context_vetoes=[]))
    out = plain.classify([item])[0]
    assert not any(r.startswith("context ") for r in out.reasons)


@pytest.mark.parametrize("field", ["thresholds", "context_thresholds"])
@pytest.mark.parametrize("value, message", [
    ({"none": 0.5}, "'none' has no threshold"),
    ({"safeguarding": 1.5}, "between 0 and 1"),
    ({"reputational": 0.0}, "between 0 and 1"),
])
def test_both_threshold_fields_are_checked_alike(field, value, message) -> None:
    # One validator (transformer.check_thresholds) for the ordinary and the context ones.
    with pytest.raises(ValueError, match=message):
        EnsembleConfig.model_validate({field: value})
