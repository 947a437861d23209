"""Source health: failures counted, the admin told once, auth failures disable, 429 waits."""
from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.cli import main
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.store import AuditEntry, OutboxMessage, SourceState, utcnow
from tests.support.configs import write_config
from tests.support.http_server import Reply

GOOD = """<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><guid>1</guid><title>Harrowgate High pupil says she wants to kill herself tonight</title>
<link>https://news.example.org/1</link></item></channel></rss>"""


def runner_for(tmp_path, http_server, paths, clock=None, **extra):
    sources = [{"id": name, "school": "harrowgate", "connector": "rss",
                "options": {"url": f"{http_server.url}/{name}"}} for name in paths]
    path = write_config(tmp_path, sources, **extra)
    return Runner(load_config(path), classifier=RulesClassifier(), clock=clock or utcnow), path


def state(runner, source_id) -> SourceState:
    with Session(runner.engine) as session:
        return session.get(SourceState, source_id)


def admin_notices(runner) -> list[OutboxMessage]:
    with Session(runner.engine) as session:
        return session.exec(select(OutboxMessage).where(OutboxMessage.kind == "admin")).all()


def test_admin_hears_once_after_n_failures_and_recovery_resets(tmp_path, http_server):
    http_server.route("/flaky", *[Reply(status=500)] * 8, Reply(body=GOOD))
    now = [utcnow()]
    runner, _ = runner_for(tmp_path, http_server, ["flaky"], clock=lambda: now[0],
                           extra="[scheduler]\nfailures_before_alert = 3\n")
    for _ in range(8):
        result = runner.poll("flaky")
        assert result.status == "failed" and "server error 500" in result.error
        now[0] += timedelta(hours=2)  # past any backoff
    assert state(runner, "flaky").consecutive_failures == 8
    notices = admin_notices(runner)
    assert len(notices) == 1 and "flaky is failing" in notices[0].subject
    assert runner.poll("flaky").status == "ok"
    healthy = state(runner, "flaky")
    assert healthy.consecutive_failures == 0 and not healthy.failure_notified


def test_backoff_skips_polls_until_due(tmp_path, http_server):
    http_server.route("/down", Reply(status=503))
    now = [utcnow()]
    runner, _ = runner_for(tmp_path, http_server, ["down"], clock=lambda: now[0])
    runner.poll("down")
    second = runner.poll("down")
    assert second.retry_at is not None
    assert runner.poll("down").status == "waiting"
    assert len(http_server.requests_to("/down")) == 2


def test_rate_limit_waits_for_reset(tmp_path, http_server):
    http_server.route("/limited", Reply(status=429, headers={"Retry-After": "600"}), Reply(body=GOOD))
    now = [utcnow()]
    runner, _ = runner_for(tmp_path, http_server, ["limited"], clock=lambda: now[0])
    result = runner.poll("limited")
    assert result.status == "rate_limited"
    assert timedelta(seconds=590) < result.retry_at - now[0] < timedelta(seconds=610)
    assert runner.poll("limited").status == "waiting"
    assert state(runner, "limited").consecutive_failures == 0
    now[0] += timedelta(minutes=11)
    assert runner.poll("limited").status == "ok"


def test_auth_failure_disables_until_config_changes(tmp_path, http_server, monkeypatch):
    http_server.route("/private", Reply(status=401))
    runner, path = runner_for(tmp_path, http_server, ["private"])
    assert runner.poll("private").status == "auth_failed"
    assert runner.poll("private").status == "disabled"
    assert len(http_server.requests_to("/private")) == 1
    assert len(admin_notices(runner)) == 1
    with Session(runner.engine) as session:
        assert session.exec(select(AuditEntry).where(AuditEntry.action == "source.disabled")).one()
    # A changed config (here: a new URL) wakes the source.
    http_server.route("/private2", Reply(body=GOOD))
    text = path.read_text().replace("/private\"", "/private2\"")
    path.write_text(text)
    changed = Runner(load_config(path), engine=runner.engine, classifier=RulesClassifier())
    assert changed.poll("private").status == "ok"


def test_one_failing_source_does_not_stop_the_others(tmp_path, http_server, capsys):
    http_server.route("/broken", Reply(status=500))
    http_server.route("/garbage", Reply(body=b"\x00\xff not a feed at all"))
    http_server.route("/good", Reply(body=GOOD))
    _, path = runner_for(tmp_path, http_server, ["broken", "garbage", "good"])
    assert main(["run", "--once", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "failed" in out
    emails = list((tmp_path / "outbox").glob("dsl*.eml"))
    assert len(emails) == 1
