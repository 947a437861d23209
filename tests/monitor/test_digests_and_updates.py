"""Digests at their hour on a controlled clock; a severity escalation, or a resolved story coming
back, sends exactly one update."""
from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.scheduler import build_scheduler
from monitor import triage
from monitor.store import AuditEntry, Incident, OutboxMessage
from tests.support.configs import write_config
from tests.support.http_server import Reply

COMPLAINT = "Harrowgate High complaint: still no refund for the trip, shocking communication"
MILD = "Parents say a pupil at Harrowgate High is being bullied every day"
SEVERE = (f"{MILD}. Update: a video of him being beaten is being shared, "
          "share it everywhere they say")
DIGEST = ('[[routes]]\ncategory = "safeguarding"\nroles = ["dsl"]\n\n'
          '[[routes]]\ncategory = "reputational"\nroles = ["headteacher"]\ncadence = "daily"\nat = "07:30"\n\n'
          '[[routes]]\ncategory = "reputational"\nroles = ["headteacher"]\ncadence = "weekly"\nday = "friday"\nat = "16:00"\n')


def feed(*items: tuple[str, str], link: str | None = None) -> str:
    body = "".join(f"<item><guid>{guid}</guid><description>{text}</description>"
                   f"<link>{link or f'https://forum.example.org/{guid}'}</link></item>"
                   for guid, text in items)
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{body}</channel></rss>'


def setup(tmp_path, http_server, body, clock, extra=""):
    http_server.route("/feed", Reply(body=body))
    path = write_config(tmp_path, [{"id": "forum", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/feed"}}], extra=extra)
    return Runner(load_config(path), classifier=RulesClassifier(), clock=lambda: clock[0])


def outbox(runner, kind=None):
    with Session(runner.engine) as session:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        if kind:
            query = query.where(OutboxMessage.kind == kind)
        return list(session.exec(query))


def test_digest_jobs_fire_at_their_local_hour(tmp_path, http_server):
    clock = [datetime(2026, 7, 2, 12, 0, tzinfo=UTC)]
    runner = setup(tmp_path, http_server, feed(("c1", COMPLAINT)), clock, extra=DIGEST)
    scheduler = build_scheduler(runner)
    scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.get_jobs() if job.id.startswith("digest:")}
        daily = jobs["digest:daily:07:30:*"].trigger
        weekly = jobs["digest:weekly:16:00:fri"].trigger
        # 07:30 in London is 06:30 UTC in July (BST) and 07:30 UTC in January (GMT).
        summer = datetime(2026, 7, 2, 12, 0, tzinfo=UTC)
        assert daily.get_next_fire_time(None, summer).astimezone(UTC) == datetime(2026, 7, 3, 6, 30, tzinfo=UTC)
        winter = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
        assert daily.get_next_fire_time(None, winter).astimezone(UTC) == datetime(2026, 1, 15, 7, 30, tzinfo=UTC)
        assert weekly.get_next_fire_time(None, summer).astimezone(UTC) == datetime(2026, 7, 3, 15, 0, tzinfo=UTC)
    finally:
        scheduler.shutdown(wait=False)


def test_daily_digest_lists_the_period_and_goes_once(tmp_path, http_server):
    clock = [datetime(2026, 7, 2, 12, 0, tzinfo=UTC)]
    runner = setup(tmp_path, http_server, feed(("c1", COMPLAINT), ("t1", SEVERE)), clock, extra=DIGEST)
    runner.poll("forum")
    # The complaint is not alerted at once: its only routes are digests.
    assert {m.recipient for m in outbox(runner, "alert")} == {
        "dsl@harrowgate.example.sch.uk", "deputy.dsl@harrowgate.example.sch.uk"}
    clock[0] = datetime(2026, 7, 3, 6, 30, tzinfo=UTC)  # 07:30 BST next morning
    runner.send_digests("daily", "07:30")
    runner.send_digests("daily", "07:30")  # a second run the same day sends nothing more
    [digest] = outbox(runner, "digest")
    assert digest.recipient == "head@harrowgate.example.sch.uk" and digest.status == "sent"
    assert digest.subject.startswith("[Schoolwatch] Daily digest - Harrowgate High School")
    assert "no refund" in digest.body_text and "trend" in digest.images
    mail = email.message_from_bytes(next((tmp_path / "outbox").glob("head*.eml")).read_bytes(),
                                    policy=email.policy.default)
    related = [p for p in mail.walk() if p.get_content_type() == "image/png"]
    assert len(related) == 1 and related[0]["Content-ID"] == "<trend>"
    # The next day's digest no longer lists yesterday's incident as new activity.
    clock[0] += timedelta(days=1)
    runner.send_digests("daily", "07:30")
    assert "no refund" not in outbox(runner, "digest")[-1].body_text


def test_a_severity_escalation_sends_exactly_one_update(tmp_path, http_server):
    clock = [datetime(2026, 3, 2, 12, 0, tzinfo=UTC)]
    story = "https://news.example.org/harrowgate-bullying"
    runner = setup(tmp_path, http_server, feed(("v1", MILD), link=story), clock)
    runner.poll("forum")
    [incident] = Session(runner.engine).exec(select(Incident)).all()
    assert incident.category == "safeguarding" and incident.severity == "medium"
    # The article is updated (new GUIDs, same story URL) and gets worse: one update to each
    # DSL, threaded under the first alert; the second copy of the update sends nothing more.
    http_server.route("/feed", Reply(body=feed(("v1", MILD), ("v2", SEVERE), ("v3", SEVERE),
                                               link=story + "?utm_source=rss")))
    clock[0] += timedelta(minutes=5)
    runner.poll("forum")
    updates = outbox(runner, "update")
    assert len(updates) == 2 and {u.recipient for u in updates} == {
        "dsl@harrowgate.example.sch.uk", "deputy.dsl@harrowgate.example.sch.uk"}
    assert all("severity medium -> high" in u.body_text and u.headers["In-Reply-To"] for u in updates)
    with Session(runner.engine) as session:
        assert session.get(Incident, incident.id).severity == "high"


def triaged_incident(tmp_path, http_server, guid, action):
    """A flagged post's incident after the DSL took ``action`` on it; the runner and clock."""
    clock = [datetime(2026, 3, 2, 12, 0, tzinfo=UTC)]
    runner = setup(tmp_path, http_server, feed((guid, MILD)), clock)
    runner.poll("forum")
    [incident] = Session(runner.engine).exec(select(Incident)).all()
    triage.apply(runner.engine, incident.id, action, "Ms Khan (DSL)")
    return runner, incident, clock


def test_a_resolved_story_that_comes_back_is_reopened_with_one_update(tmp_path, http_server):
    runner, incident, clock = triaged_incident(tmp_path, http_server, "r1", "resolve")
    # A week later the same post is shared again under new ids, once in each of two polls.
    clock[0] += timedelta(days=7)
    http_server.route("/feed", Reply(body=feed(("r1", MILD), ("r2", MILD))))
    runner.poll("forum")
    http_server.route("/feed", Reply(body=feed(("r1", MILD), ("r2", MILD), ("r3", MILD))))
    runner.poll("forum")
    with Session(runner.engine) as session:
        assert session.get(Incident, incident.id).status == "open"
        reopens = session.exec(select(AuditEntry).where(AuditEntry.action == "incident.reopen")).all()
    assert [(r.actor, r.detail["from"], r.detail["to"]) for r in reopens] == [
        ("daemon", "resolved", "open")]
    updates = outbox(runner, "update")
    assert {u.recipient for u in updates} == {"dsl@harrowgate.example.sch.uk",
                                              "deputy.dsl@harrowgate.example.sch.uk"}
    assert len(updates) == 2 and all("came back after it was resolved" in u.body_text for u in updates)


def test_repeats_of_a_false_positive_stay_quiet(tmp_path, http_server):
    runner, incident, _clock = triaged_incident(tmp_path, http_server, "f1", "false-positive")
    http_server.route("/feed", Reply(body=feed(("f1", MILD), ("f2", MILD))))
    runner.poll("forum")
    with Session(runner.engine) as session:
        stored = session.get(Incident, incident.id)
    assert stored.status == "false_positive" and stored.mention_count == 2
    assert outbox(runner, "update") == []
