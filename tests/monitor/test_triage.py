"""Triage transitions, each audited; an append-only audit log; feedback and suppression."""
from __future__ import annotations

import json

import pytest
from sqlalchemy.exc import DatabaseError
from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.cli import main
from monitor.config import load_config
from monitor.feedback import FeedbackExample, add_rule, list_rules, remove_rule
from monitor.pipeline import Runner
from monitor.store import AuditEntry, Incident, MentionRow
from monitor.triage import TriageError, apply
from tests.support.configs import write_config
from tests.support.http_server import Reply

FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><guid>1</guid><description>Harrowgate High lad says hes bringing a knife in tomorrow</description>
<link>https://forum.example.org/1</link><author>angry_dad</author></item>
<item><guid>2</guid><description>Harrowgate High is a joke, the head is a useless liar</description>
<link>https://forum.example.org/2</link><author>troll_account</author></item>
</channel></rss>"""


@pytest.fixture
def setup(tmp_path, http_server):
    http_server.route("/feed", Reply(body=FEED))
    path = write_config(tmp_path, [{"id": "forum", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}])
    runner = Runner(load_config(path), classifier=RulesClassifier())
    runner.poll("forum")
    return runner, path


def audit_actions(engine) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        return [(e.actor, e.action, e.object_id) for e in session.exec(select(AuditEntry).order_by(AuditEntry.id))]


def incident(engine, category) -> Incident:
    with Session(engine) as session:
        return session.exec(select(Incident).where(Incident.category == category)).one()


def test_each_transition_is_audited(setup):
    runner, _ = setup
    engine = runner.engine
    threat = incident(engine, "safeguarding").id
    steps = [("ack", "acknowledged"), ("note", "acknowledged"), ("resolve", "resolved"),
             ("reopen", "open"), ("false-positive", "false_positive")]
    for action, expected in steps:
        assert apply(engine, threat, action, "Ms Okafor", note="checked").status == expected
    assert [a for a in audit_actions(engine) if a[2] == str(threat)] == [
        ("Ms Okafor", f"incident.{action}", str(threat)) for action, _ in steps]


@pytest.mark.parametrize(("start", "action"), [("resolve", "ack"), ("ack", "ack"),
                                                 ("false-positive", "resolve")])
def test_transitions_not_allowed_from_the_wrong_state(setup, start, action):
    runner, _ = setup
    threat = incident(runner.engine, "safeguarding").id
    apply(runner.engine, threat, start, "a")
    before = audit_actions(runner.engine)
    with pytest.raises(TriageError, match="needs"):
        apply(runner.engine, threat, action, "a")
    assert audit_actions(runner.engine) == before


def test_actor_is_required_and_unknown_incidents_refused(setup):
    runner, _ = setup
    with pytest.raises(TriageError, match="who is acting"):
        apply(runner.engine, 1, "ack", "  ")
    with pytest.raises(TriageError, match="no incident #999"):
        apply(runner.engine, 999, "ack", "x")


def test_audit_log_cannot_be_altered(setup):
    runner, _ = setup
    apply(runner.engine, incident(runner.engine, "safeguarding").id, "ack", "Ms Okafor")
    with Session(runner.engine) as session:
        entry = session.exec(select(AuditEntry)).first()
        entry.actor = "someone else"
        session.add(entry)
        with pytest.raises(DatabaseError, match="append-only"):
            session.commit()
    with Session(runner.engine) as session, pytest.raises(DatabaseError, match="append-only"):
        session.exec(AuditEntry.__table__.delete())
        session.commit()


def test_cli_offers_no_way_to_change_the_audit_log(setup, capsys):
    _, path = setup
    with pytest.raises(SystemExit):
        main(["audit", "delete", "--config", str(path)])
    help_text = capsys.readouterr()
    assert "invalid choice: 'audit'" in help_text.err


def test_cli_triage_round_trip(setup, capsys):
    runner, path = setup
    threat = incident(runner.engine, "safeguarding").id
    assert main(["incidents", "ack", str(threat), "--by", "Ms Okafor", "--config", str(path)]) == 0
    assert main(["incidents", "ack", str(threat), "--by", "Ms Okafor", "--config", str(path)]) == 1
    assert main(["incidents", "list", "--status", "acknowledged", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "is acknowledged" in out and "safeguarding" in out
    assert main(["incidents", "show", str(threat), "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "Ms Okafor: incident.ack" in shown and "bringing a knife" in shown


def test_false_positive_becomes_a_training_example(setup, tmp_path):
    runner, path = setup
    insult = incident(runner.engine, "disparaging").id
    apply(runner.engine, insult, "false-positive", "Mr Head")
    with Session(runner.engine) as session:
        [example] = session.exec(select(FeedbackExample)).all()
    assert example.label == "none" and example.predicted == "disparaging"
    out = tmp_path / "feedback.jsonl"
    assert main(["feedback", "export", "--out", str(out), "--config", str(path)]) == 0
    line = json.loads(out.read_text())
    assert line["label"] == "none" and "useless liar" in line["text"]


def test_suppression_rules_are_listed_reversible_and_audited(tmp_path, http_server):
    http_server.route("/feed", Reply(body=FEED))
    path = write_config(tmp_path, [{"id": "forum", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}])
    settings = load_config(path)
    runner = Runner(settings, classifier=RulesClassifier())
    rule = add_rule(runner.engine, "harrowgate", "author", "@Troll_Account", "Mr Head", "parody account")
    assert [r.id for r in list_rules(runner.engine)] == [rule.id]
    result = runner.poll("forum")
    assert result.flagged == 1 and result.incidents == 1  # only the threat
    with Session(runner.engine) as session:
        suppressed = session.exec(select(MentionRow).where(MentionRow.author == "troll_account")).one()
        assert suppressed.incident_id is None
    remove_rule(runner.engine, rule.id, "Mr Head")
    assert list_rules(runner.engine) == []
    assert len(list_rules(runner.engine, include_removed=True)) == 1
    assert [a[1] for a in audit_actions(runner.engine)] == ["suppression.add", "suppression.remove"]
