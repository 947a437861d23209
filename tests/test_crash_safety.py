"""A failure mid-batch leaves the cursor and the store as they were; the next run delivers once."""
from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, func, select

import monitor.pipeline
from classifiers.rules import RulesClassifier
from monitor.config import load_config
from monitor.pipeline import Runner
from monitor.store import (
    AssessmentRow,
    Incident,
    MentionRow,
    OutboxMessage,
    SeenKey,
    SourceState,
)
from tests.support.configs import write_config
from tests.support.http_server import Reply


class ExplodingClassifier(RulesClassifier):
    """The real rules classifier, except that it fails on the batch it is told to."""

    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.fail = fail

    def classify(self, items):
        verdicts = super().classify(items)
        if self.fail:
            raise RuntimeError("simulated crash inside classify")
        return verdicts


@pytest.fixture
def settings(tmp_path, http_server):
    from monitor.cli import demo_config_path

    body = (demo_config_path().parent / "feeds" / "community-group.xml").read_bytes()
    http_server.route("/community.xml", Reply(body=body, etag='"c1"'))
    path = write_config(tmp_path, [{"id": "community", "school": "harrowgate", "connector": "rss",
                                    "options": {"url": f"{http_server.url}/community.xml"}}])
    return load_config(path)


def counts(runner: Runner) -> dict[str, int]:
    with Session(runner.engine) as session:
        return {table.__name__: session.exec(select(func.count()).select_from(table)).one()
                for table in (SeenKey, MentionRow, AssessmentRow, Incident, OutboxMessage)}


def cursor(runner: Runner) -> str | None:
    with Session(runner.engine) as session:
        state = session.get(SourceState, "community")
        return state.cursor if state else None


def delivered_once(runner: Runner, tmp_path) -> Counter:
    runner.deliver_outbox()
    with Session(runner.engine) as session:
        rows = session.exec(select(OutboxMessage)).all()
    assert rows and all(r.status == "sent" for r in rows)
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == len(rows)
    return Counter((r.incident_id, r.recipient) for r in rows)


def test_crash_inside_classify(settings, tmp_path, http_server):
    broken = Runner(settings, classifier=ExplodingClassifier(fail=True))
    result = broken.poll("community")
    assert result.status == "failed" and "simulated crash" in result.error
    assert cursor(broken) is None
    assert counts(broken) == dict.fromkeys(counts(broken), 0)

    fixed = Runner(settings, engine=broken.engine, classifier=RulesClassifier())
    assert fixed.poll("community").status == "ok"
    # The feed was fetched again from scratch, not from a cursor the crash advanced.
    assert "If-None-Match" not in http_server.requests_to("/community.xml")[-1].headers
    assert set(delivered_once(fixed, tmp_path).values()) == {1}
    assert cursor(fixed) is not None


def test_crash_inside_store(settings, tmp_path, monkeypatch):
    real_attach = monitor.pipeline.attach
    calls = {"n": 0}

    def attach_then_crash(session, row, assessment, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated disk failure while storing")
        return real_attach(session, row, assessment, *args, **kwargs)

    monkeypatch.setattr(monitor.pipeline, "attach", attach_then_crash)
    runner = Runner(settings, classifier=RulesClassifier())
    result = runner.poll("community")
    assert result.status == "failed" and "simulated disk failure" in result.error
    assert counts(runner) == dict.fromkeys(counts(runner), 0), "a half-stored batch was committed"
    assert cursor(runner) is None
    with Session(runner.engine) as session:
        assert session.get(SourceState, "community").consecutive_failures == 1

    monkeypatch.setattr(monitor.pipeline, "attach", real_attach)
    assert runner.poll("community").status == "ok"
    once = delivered_once(runner, tmp_path)
    assert set(once.values()) == {1}
    # Polling again finds nothing new and sends nothing more.
    assert runner.poll("community").new == 0
    assert runner.deliver_outbox().sent == 0
