"""Retention purge on a controlled clock, legal holds, and data-subject export and erase."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import Session, func, select

from classifiers.rules import RulesClassifier
from monitor.cli import main
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.privacy import erase_subject, export_subject, set_legal_hold
from monitor.retention import purge
from monitor.store import AssessmentRow, AuditEntry, Incident, MentionRow, OutboxMessage, SeenKey, utcnow
from monitor.triage import apply
from tests.support.configs import write_config
from tests.support.http_server import Reply

FEED = """<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><guid>threat</guid><description>Harrowgate High lad says hes bringing a knife in tomorrow</description>
<link>https://forum.example.org/1</link><author>angry_dad</author></item>
<item><guid>insult</guid><description>Harrowgate High is a joke, Mr Dawson is a useless liar</description>
<link>https://forum.example.org/2</link><author>troll_account</author></item>
<item><guid>review</guid><description>Harrowgate High complaint: no refund for the trip still, shocking</description>
<link>https://forum.example.org/3</link><author>gary_w</author></item>
<item><guid>nice</guid><description>Harrowgate High chess club won again, well done Mr Dawson</description>
<link>https://forum.example.org/4</link><author>proud_mum</author></item>
<item><guid>elsewhere</guid><description>Bake sale at the church hall on Saturday</description>
<link>https://forum.example.org/5</link><author>vicar</author></item>
</channel></rss>"""


@pytest.fixture
def world(tmp_path, http_server):
    http_server.route("/feed", Reply(body=FEED))
    path = write_config(tmp_path, [{"id": "forum", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}])
    now = [utcnow()]
    runner = Runner(load_config(path), classifier=RulesClassifier(), clock=lambda: now[0])
    runner.poll("forum")
    runner.deliver_outbox()
    return runner, now, path


def count(engine, table, *where) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table).where(*where)).one()


def categories(engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(Incident.category)).all())


def test_purge_follows_the_retention_settings(world):
    runner, now, _ = world
    retention = runner.settings.retention
    engine = runner.engine
    assert categories(engine) == {"safeguarding", "disparaging", "reputational"}
    assert count(engine, MentionRow, MentionRow.incident_id.is_(None)) == 1  # the chess post
    assert count(engine, SeenKey) == 5

    assert sum(purge(engine, retention, now=now[0] + timedelta(days=29)).values()) == 0
    counts = purge(engine, retention, now=now[0] + timedelta(days=31))
    assert counts["unflagged_mentions"] == 1
    assert count(engine, MentionRow) == 3
    counts = purge(engine, retention, now=now[0] + timedelta(days=91))
    assert counts["sent_messages"] == 4 and counts["seen_ids"] == 5
    purge(engine, retention, now=now[0] + timedelta(days=366))
    assert categories(engine) == {"safeguarding", "disparaging"}
    purge(engine, retention, now=now[0] + timedelta(days=731))
    assert categories(engine) == {"safeguarding"}
    purge(engine, retention, now=now[0] + timedelta(days=2191))
    assert categories(engine) == set()
    assert count(engine, MentionRow) == count(engine, AssessmentRow) == count(engine, OutboxMessage) == 0
    with Session(engine) as session:
        logged = session.exec(select(AuditEntry).where(AuditEntry.action == "retention.purge")).all()
    assert len(logged) == 6 and logged[1].detail["unflagged_mentions"] == 1


def test_false_positives_go_sooner(world):
    runner, now, _ = world
    with Session(runner.engine) as session:
        insult = session.exec(select(Incident).where(Incident.category == "disparaging")).one()
    apply(runner.engine, insult.id, "false-positive", "Mr Head")
    purge(runner.engine, runner.settings.retention, now=now[0] + timedelta(days=31))
    assert "disparaging" not in categories(runner.engine)


def test_legal_hold_is_never_purged(world):
    runner, now, _ = world
    with Session(runner.engine) as session:
        threat = session.exec(select(Incident).where(Incident.category == "safeguarding")).one()
    set_legal_hold(runner.engine, threat.id, "Ms Okafor", True, "police referral 26/1234")
    counts = purge(runner.engine, runner.settings.retention, now=now[0] + timedelta(days=5000))
    assert categories(runner.engine) == {"safeguarding"}
    assert counts["incidents_on_hold_kept"] == 1
    set_legal_hold(runner.engine, threat.id, "Ms Okafor", False)
    purge(runner.engine, runner.settings.retention, now=now[0] + timedelta(days=5000))
    assert categories(runner.engine) == set()


def test_dry_run_deletes_nothing(world, capsys):
    runner, now, path = world
    before = count(runner.engine, MentionRow)
    assert main(["purge", "--dry-run", "--config", str(path)]) == 0
    assert "would delete" in capsys.readouterr().out
    assert count(runner.engine, MentionRow) == before


def test_subject_export_finds_authored_and_named_items(world, tmp_path):
    runner, _, _ = world
    out = tmp_path / "dawson.json"
    counts = export_subject(runner.engine, "Mr Dawson", out, "DPO")
    document = json.loads(out.read_text())
    texts = [m["text"] for m in document["mentions"]]
    assert counts["mentions"] == 2 and all("Dawson" in t for t in texts)
    assert document["messages"]  # the alert about the insult quoted his name
    by_handle = export_subject(runner.engine, "@troll_account", tmp_path / "t.json", "DPO")
    assert by_handle["mentions"] == 1
    with Session(runner.engine) as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "privacy.export")).first()
    assert entry.object_id.startswith("sha256:") and "Dawson" not in json.dumps(entry.detail)


def test_erase_refuses_held_items_and_says_so(world, capsys):
    runner, _, path = world
    with Session(runner.engine) as session:
        insult = session.exec(select(Incident).where(Incident.category == "disparaging")).one()
    set_legal_hold(runner.engine, insult.id, "Mr Head", True, "defamation claim")
    counts, refused = erase_subject(runner.engine, "Mr Dawson", "DPO")
    assert refused == [insult.id]
    assert counts["mentions"] == 1 and counts["mentions_refused_legal_hold"] == 1
    with Session(runner.engine) as session:
        left = session.exec(select(MentionRow).where(MentionRow.text.contains("Dawson"))).all()
    assert [m.incident_id for m in left] == [insult.id]
    assert main(["privacy", "erase", "--subject", "Mr Dawson", "--by", "DPO",
                 "--config", str(path)]) == 1
    assert "REFUSED 1 mentions in incidents under legal hold" in capsys.readouterr().out


def test_erase_by_handle(world):
    runner, _, _ = world
    counts, refused = erase_subject(runner.engine, "angry_dad", "DPO")
    assert counts["mentions"] == 1 and refused == []
    assert count(runner.engine, MentionRow, MentionRow.author == "angry_dad") == 0


def test_subject_must_be_specific():
    from monitor.privacy import find_subject

    with pytest.raises(ValueError, match="at least 3"):
        find_subject(None, "@a")
