"""The rules classifier: must-flag and hard-negative lists, reasons, priority, bad input."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from classifiers.base import Category, ClassifierInput, Severity
from classifiers.rules import RulesClassifier, RulesConfig, RulesError
from classifiers.rules.engine import parse_rules

CASES = tomllib.loads((Path(__file__).parent / "rules_cases.toml").read_text())


@pytest.fixture(scope="module")
def rules() -> RulesClassifier:
    return RulesClassifier()


def verdict(rules, text):
    return rules.classify([ClassifierInput(text=text)])[0]


@pytest.mark.parametrize(("text", "category", "subtype"), CASES["must_flag"])
def test_must_flag(rules, text, category, subtype):
    result = verdict(rules, text)
    assert result.category.value == category, (text, result.reasons)
    assert (result.subtype.value if result.subtype else "") == subtype
    assert result.severity is not None and result.reasons


@pytest.mark.parametrize("text", CASES["hard_negative"])
def test_hard_negatives_stay_none(rules, text):
    result = verdict(rules, text)
    assert result.category is Category.NONE, (text, result.reasons)
    assert result.severity is None and result.reasons == []


def test_reasons_name_the_rule_and_quote_the_words(rules):
    result = verdict(rules, "i cant do this anymore, took pills tonight")
    assert "rule self_harm: 'cant do this anymore'" in result.reasons
    assert result.severity is Severity.HIGH
    assert any(r.startswith("rule imminent: ") for r in result.reasons)


def test_priority_safeguarding_over_disparaging(rules):
    result = verdict(rules, "Mr Dawson is a useless bully and im gonna stab him tomorrow")
    assert result.category is Category.SAFEGUARDING
    assert set(result.labels) == {Category.SAFEGUARDING, Category.DISPARAGING}
    assert result.scores["disparaging"] > 0 and result.scores["safeguarding"] > 0


def test_invisible_characters_do_not_hide_words(rules):
    assert verdict(rules, "k\u200bms tonight").subtype.value == "self_harm"
    assert verdict(rules, "\u202eim gonna kill myself").category is Category.SAFEGUARDING
    assert verdict(rules, "ｋｉｌｌ ｍｙｓｅｌｆ").category is Category.SAFEGUARDING


@pytest.mark.parametrize("text", ["", " ", "\x00\x01\x02", "<p></p>", "a" * 1_000_000,
                                  "kill " * 200_000, "\U0001F480" * 10_000])
def test_pathological_input_does_not_crash(rules, text):
    assert verdict(rules, text).category in set(Category)


def test_html_is_ignored(rules):
    assert verdict(rules, "<b>i want to die</b> <script>x</script>").subtype.value == "self_harm"


def test_bad_rule_file_names_the_rule():
    bad = '[[rule]]\nid = "broken_one"\ncategory = "safeguarding"\nsubtype = "self_harm"\n' \
          'severity = "high"\npatterns = ["(unclosed"]\n'
    with pytest.raises(RulesError, match="rule 'broken_one': pattern 1 '\\(unclosed' does not compile"):
        parse_rules([("school.toml", bad)])


def test_nested_quantifiers_are_refused():
    bad = '[[rule]]\nid = "slow"\ncategory = "reputational"\nseverity = "low"\npatterns = ["(a+)+b"]\n'
    with pytest.raises(RulesError, match="rule 'slow'.*backtrack"):
        parse_rules([("x.toml", bad)])


def test_missing_subtype_is_refused():
    bad = '[[rule]]\nid = "nosub"\ncategory = "safeguarding"\nseverity = "low"\npatterns = ["x"]\n'
    with pytest.raises(RulesError, match="rule 'nosub'.*needs a subtype"):
        parse_rules([("x.toml", bad)])


def test_a_school_can_add_its_own_rules(tmp_path):
    extra = tmp_path / "local.toml"
    extra.write_text('[[rule]]\nid = "local_gang"\ncategory = "safeguarding"\n'
                     'subtype = "violence_threat"\nseverity = "high"\npatterns = ["red ?brick crew"]\n')
    local = RulesClassifier(RulesConfig(extra_rules=str(extra)))
    assert verdict(local, "the redbrick crew are waiting").reasons == ["rule local_gang: 'redbrick crew'"]
    with pytest.raises(RulesError, match="cannot read"):
        RulesClassifier(RulesConfig(extra_rules=str(tmp_path / "missing.toml")))


def test_named_contexts_are_reported() -> None:
    from classifiers.rules import RulesClassifier

    rules = RulesClassifier()
    items = [ClassifierInput(text="All staff completed Prevent training today"),
             ClassifierInput(text="we absolutely killed it at the concert 😂"),
             ClassifierInput(text="see you at parents evening")]
    found = rules.contexts(items)
    assert found[0] == {"training": "training"}
    assert set(found[1]) == {"idiom"}
    assert found[2] == {}
    assert rules.contexts(items, ["fiction"])[0] == {}
