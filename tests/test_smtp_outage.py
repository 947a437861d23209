"""An SMTP server that is down: alerts wait in the outbox and go out once it is back."""
from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.store import OutboxMessage, utcnow
from tests.support.configs import write_config
from tests.support.http_server import Reply
from tests.support.smtp_server import SmtpServer


def test_alerts_survive_an_smtp_outage(tmp_path, http_server, monkeypatch):
    from monitor.cli import demo_config_path

    body = (demo_config_path().parent / "feeds" / "community-group.xml").read_bytes()
    http_server.route("/community.xml", Reply(body=body))
    smtp = SmtpServer()  # not started: nothing listens on its port yet
    monkeypatch.setenv("SW_TEST_SMTP_PASSWORD", smtp.password)
    path = write_config(tmp_path, [{"id": "community", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/community.xml"}}],
                        smtp={"host": "127.0.0.1", "port": smtp.port, "username": smtp.username,
                              "password": {"env": "SW_TEST_SMTP_PASSWORD"},
                              "ca_file": smtp.ca_file(tmp_path), "timeout": 5})
    now = [utcnow()]
    runner = Runner(load_config(path), classifier=RulesClassifier(), clock=lambda: now[0])
    assert runner.poll("community").queued > 0

    report = runner.deliver_outbox()
    # One failed connection ends the pass: a dead relay costs one timeout, not one per message.
    assert report.sent == 0 and report.failed == 1
    with Session(runner.engine) as session:
        rows = session.exec(select(OutboxMessage)).all()
    assert all(r.status == "pending" and r.leased_until is None for r in rows)
    assert [r.attempts for r in rows].count(1) == 1
    assert "cannot deliver" in next(r.last_error for r in rows if r.attempts)
    # The next pass tries one other message, once; the failed one waits out its backoff.
    first_failed = next(r.id for r in rows if r.attempts)
    assert runner.deliver_outbox().failed <= 1
    with Session(runner.engine) as session:
        assert session.get(OutboxMessage, first_failed).attempts == 1

    smtp.start()
    try:
        now[0] += timedelta(minutes=2)
        report = runner.deliver_outbox()
        assert report.sent == len(rows) and report.failed == 0
        assert len(smtp.messages) == len(rows)
        assert runner.deliver_outbox().sent == 0
    finally:
        smtp.stop()
    with Session(runner.engine) as session:
        assert all(r.status == "sent" for r in session.exec(select(OutboxMessage)))


def test_rejected_recipient_is_kept_and_others_delivered(tmp_path, http_server, smtp_server, monkeypatch):
    from monitor.cli import demo_config_path

    body = (demo_config_path().parent / "feeds" / "community-group.xml").read_bytes()
    http_server.route("/community.xml", Reply(body=body))
    monkeypatch.setenv("SW_TEST_SMTP_PASSWORD", smtp_server.password)
    smtp_server.mailbox.reject.add("deputy.dsl@harrowgate.example.sch.uk")
    path = write_config(tmp_path, [{"id": "community", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/community.xml"}}],
                        smtp={"host": "127.0.0.1", "port": smtp_server.port,
                              "username": smtp_server.username,
                              "password": {"env": "SW_TEST_SMTP_PASSWORD"},
                              "ca_file": smtp_server.ca_file(tmp_path)})
    runner = Runner(load_config(path), classifier=RulesClassifier())
    runner.poll("community")
    runner.deliver_outbox()
    with Session(runner.engine) as session:
        rows = session.exec(select(OutboxMessage)).all()
    refused = [r for r in rows if r.recipient.startswith("deputy")]
    assert refused and all(r.status == "pending" and "refused" in r.last_error for r in refused)
    assert all(r.status == "sent" for r in rows
               if not r.recipient.startswith("deputy") and r.kind != "admin")
    # The admin is told that the deputy DSL receives nothing.
    [notice] = [r for r in rows if r.kind == "admin"]
    assert "deputy.dsl@harrowgate.example.sch.uk" in notice.body_text
