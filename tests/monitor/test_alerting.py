"""Routing in time: quiet hours, escalation without acknowledgement, spreading stories, channels."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.store import AuditEntry, OutboxMessage
from monitor.triage import apply
from tests.support.configs import write_config
from tests.support.http_server import Reply

# 22:30 on a January evening in London (GMT), inside 21:00-07:00 quiet hours.
LATE = datetime(2026, 1, 14, 22, 30, tzinfo=UTC)
QUIET = '[alerting]\nquiet_hours_start = "21:00"\nquiet_hours_end = "07:00"\n'


def item(guid: str, text: str) -> str:
    return (f"<item><guid>{guid}</guid><description>{text}</description>"
            f"<link>https://forum.example.org/{guid}</link></item>")


def feed(*items: str) -> str:
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{"".join(items)}</channel></rss>'


COMPLAINT = item("c1", "Harrowgate High complaint: no refund for the trip, shocking communication")
THREAT = item("t1", "Harrowgate High lad says hes bringing a knife in tomorrow")


def runner_at(tmp_path, http_server, body: str, clock, extra: str = "", **kwargs) -> Runner:
    http_server.route("/feed", Reply(body=body))
    path = write_config(tmp_path, [{"id": "forum", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}],
                        extra=extra, **kwargs)
    return Runner(load_config(path), classifier=RulesClassifier(), clock=lambda: clock[0])


def outbox(runner) -> list[OutboxMessage]:
    with Session(runner.engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_quiet_hours_hold_reputational_until_morning_but_never_safeguarding(tmp_path, http_server):
    clock = [LATE]
    runner = runner_at(tmp_path, http_server, feed(COMPLAINT, THREAT), clock, extra=QUIET)
    runner.poll("forum")
    assert runner.deliver_outbox().sent == 2  # the two DSLs, at 22:30
    held = [m for m in outbox(runner) if m.status == "pending"]
    assert [m.recipient for m in held] == ["head@harrowgate.example.sch.uk"]
    assert held[0].next_attempt_at.replace(tzinfo=UTC) == datetime(2026, 1, 15, 7, 0, tzinfo=UTC)
    clock[0] = datetime(2026, 1, 15, 6, 59, tzinfo=UTC)
    assert runner.deliver_outbox().sent == 0
    clock[0] = datetime(2026, 1, 15, 7, 0, tzinfo=UTC)
    assert runner.deliver_outbox().sent == 1


def test_quiet_hours_follow_british_summer_time(tmp_path, http_server):
    clock = [datetime(2026, 7, 1, 5, 30, tzinfo=UTC)]  # 06:30 BST: still quiet
    runner = runner_at(tmp_path, http_server, feed(COMPLAINT), clock, extra=QUIET)
    runner.poll("forum")
    [held] = outbox(runner)
    assert held.next_attempt_at.replace(tzinfo=UTC) == datetime(2026, 7, 1, 6, 0, tzinfo=UTC)


def test_unacknowledged_high_safeguarding_escalates_once_per_step(tmp_path, http_server):
    clock = [LATE]
    extra = ('[alerting]\nescalate_after = "30m"\nescalation_roles = ["headteacher", "governor"]\n')
    http_server.route("/feed", Reply(body=feed(THREAT)))
    path = write_config(tmp_path, [{"id": "forum", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}], extra=extra)
    path.write_text(path.read_text().replace(
        'headteacher = ["head@harrowgate.example.sch.uk"]',
        'headteacher = ["head@harrowgate.example.sch.uk"]\ngovernor = ["chair@harrowgate.example.sch.uk"]'))
    runner = Runner(load_config(path), classifier=RulesClassifier(), clock=lambda: clock[0])
    runner.poll("forum")
    for minutes in (10, 29):
        clock[0] = LATE + timedelta(minutes=minutes)
        runner.escalate()
    assert {m.kind for m in outbox(runner)} == {"alert"}
    clock[0] = LATE + timedelta(minutes=31)
    runner.escalate()
    runner.escalate()  # a second check in the same step sends nothing more
    escalations = [m for m in outbox(runner) if m.kind == "escalation"]
    assert [m.recipient for m in escalations] == ["head@harrowgate.example.sch.uk"]
    assert escalations[0].subject.startswith("[Schoolwatch] ESCALATED: SAFEGUARDING")
    assert "not acknowledged after 31 minutes" in escalations[0].body_text
    assert escalations[0].status == "sent"  # escalations go at once, even at night

    # Acknowledged before the next step: nobody else is woken.
    apply(runner.engine, escalations[0].incident_id, "ack", "Ms Okafor")
    clock[0] = LATE + timedelta(minutes=61)
    runner.escalate()
    assert len([m for m in outbox(runner) if m.kind == "escalation"]) == 1
    with Session(runner.engine) as session:
        logged = session.exec(select(AuditEntry).where(AuditEntry.action == "incident.escalated")).all()
    assert [e.detail["role"] for e in logged] == ["headteacher"]


def test_a_spreading_story_sends_one_update_per_volume_step(tmp_path, http_server):
    clock = [datetime(2026, 3, 2, 12, 0, tzinfo=UTC)]
    copies = [item(f"c{i}", "RT @gary: Harrowgate High complaint: no refund for the trip, shocking communication")
              for i in range(12)]
    runner = runner_at(tmp_path, http_server, feed(*copies), clock,
                       extra='[alerting]\nvolume_steps = [3, 10, 50]\n')
    runner.poll("forum")
    kinds = [(m.kind, m.recipient) for m in outbox(runner)]
    assert kinds == [("alert", "head@harrowgate.example.sch.uk"),
                     ("update", "head@harrowgate.example.sch.uk"),
                     ("update", "head@harrowgate.example.sch.uk")]
    updates = [m for m in outbox(runner) if m.kind == "update"]
    assert "spreading: 3 mentions" in updates[0].body_text
    assert "spreading: 10 mentions" in updates[1].body_text
    assert updates[0].headers["In-Reply-To"]  # threads under the first alert


def test_routes_limited_to_a_school_and_sent_to_teams_through_apprise(tmp_path, http_server,
                                                                       other_server, monkeypatch):
    other_server.route("/teams-hook", Reply(status=200, body="{}"), method="POST")
    monkeypatch.setenv("SW_TEAMS_URL", f"json://127.0.0.1:{other_server.url.rsplit(':', 1)[1]}/teams-hook")
    extra = ('[channels.teams]\nurls = [{env = "SW_TEAMS_URL"}]\n\n'
             '[[routes]]\ncategory = "safeguarding"\nroles = ["dsl"]\nchannels = ["email", "teams"]\n\n'
             '[[routes]]\ncategory = "reputational"\nroles = ["headteacher"]\nschools = ["harrowgate"]\n')
    clock = [datetime(2026, 3, 2, 12, 0, tzinfo=UTC)]
    runner = runner_at(tmp_path, http_server, feed(THREAT, COMPLAINT), clock, extra=extra)
    runner.poll("forum")
    assert runner.deliver_outbox().failed == 0
    channels = sorted((m.channel, m.recipient) for m in outbox(runner))
    assert channels == [("apprise:teams", "teams"), ("file", "deputy.dsl@harrowgate.example.sch.uk"),
                        ("file", "dsl@harrowgate.example.sch.uk"), ("file", "head@harrowgate.example.sch.uk")]
    [posted] = other_server.requests_to("/teams-hook")
    body = json.loads(posted.body)
    assert body["title"].startswith("[Schoolwatch] SAFEGUARDING") and "knife" in body["message"]


def test_apprise_failure_keeps_the_message(tmp_path, http_server, other_server, monkeypatch):
    other_server.route("/teams-hook", Reply(status=500, body="down"), method="POST")
    monkeypatch.setenv("SW_TEAMS_URL", f"json://127.0.0.1:{other_server.url.rsplit(':', 1)[1]}/teams-hook")
    extra = ('[channels.teams]\nurls = [{env = "SW_TEAMS_URL"}]\n\n'
             '[[routes]]\ncategory = "safeguarding"\nroles = ["dsl"]\nchannels = ["teams"]\n')
    clock = [datetime(2026, 3, 2, 12, 0, tzinfo=UTC)]
    runner = runner_at(tmp_path, http_server, feed(THREAT), clock, extra=extra)
    runner.poll("forum")
    assert runner.deliver_outbox().failed == 1
    [kept] = outbox(runner)
    assert kept.status == "pending" and "refused" in kept.last_error
    assert "SW_TEAMS_URL" not in kept.last_error and "teams-hook" not in kept.last_error
