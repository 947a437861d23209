"""The daemon end to end: a real feed server, a real SMTP server with STARTTLS, a real SQLite file,
the default classifier (the packaged transformer model and the rules)."""
from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, select

from monitor.cli import main
from monitor.config import load_config
from monitor.store import Incident, MentionRow, OutboxMessage, SourceState, make_engine
from tests.support.configs import write_config
from tests.support.http_server import Reply

DSL = {"dsl@harrowgate.example.sch.uk", "deputy.dsl@harrowgate.example.sch.uk"}
HEAD = {"head@harrowgate.example.sch.uk"}
FEEDS = {"/news.xml": "local-news.xml", "/alert.xml": "google-alert.xml",
         "/community.xml": "community-group.xml"}


@pytest.fixture
def feeds(http_server):
    from monitor.cli import demo_config_path

    folder = demo_config_path().parent / "feeds"
    for path, name in FEEDS.items():
        http_server.route(path, Reply(body=(folder / name).read_bytes(), etag=f'"{name}-v1"',
                                      content_type="application/rss+xml"))
    return http_server


@pytest.fixture
def config(tmp_path, feeds, smtp_server, monkeypatch):
    monkeypatch.setenv("SW_TEST_SMTP_PASSWORD", smtp_server.password)
    sources = [{"id": f"src-{i}", "school": "harrowgate", "connector": "rss",
                "options": {"url": f"{feeds.url}{path}"}} for i, path in enumerate(FEEDS)]
    smtp = {"host": "127.0.0.1", "port": smtp_server.port, "security": "starttls",
            "username": smtp_server.username, "password": {"env": "SW_TEST_SMTP_PASSWORD"},
            "ca_file": smtp_server.ca_file(tmp_path), "timeout": 10}
    # The default classifier, the packaged model with the rules: the whole product as shipped.
    return write_config(tmp_path, sources, smtp=smtp, classifier=None)


def store(config):
    return make_engine(load_config(config).store.url)


def test_one_email_per_incident_per_recipient_and_nothing_twice(config, smtp_server, feeds):
    assert main(["run", "--once", "--config", str(config)]) == 0
    received = smtp_server.messages
    assert received, "no alert reached the SMTP server"
    with Session(store(config)) as session:
        incidents = session.exec(select(Incident)).all()
        by_id = {i.id: i for i in incidents}
        outbox = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all()
    assert all(row.status == "sent" for row in outbox)
    # Exactly one message per (incident, recipient), and to the right people.
    pairs = Counter((row.incident_id, row.recipient) for row in outbox)
    assert set(pairs.values()) == {1}
    for incident in incidents:
        recipients = {r for (i, r) in pairs if i == incident.id}
        assert recipients == (DSL if incident.category == "safeguarding" else HEAD), incident.title
    assert len(received) == len(outbox)
    assert {tuple(m.recipients) for m in received} == {(row.recipient,) for row in outbox}

    # The self-harm post reached both DSLs at once, and its repost joined the same incident.
    self_harm = [m for m in received if "cant do this anymore" in m.message.get_body(("plain",)).get_content()]
    assert {m.recipients[0] for m in self_harm} == DSL
    assert "SAFEGUARDING" in self_harm[0].message["Subject"]
    with Session(store(config)) as session:
        reposts = session.exec(select(MentionRow).where(MentionRow.external_id.like("community-501%"))).all()
    assert len(reposts) == 2 and reposts[0].incident_id == reposts[1].incident_id
    assert by_id[reposts[0].incident_id].mention_count == 2

    # Not about the school: the High Street is excluded, so nothing was stored for it.
    with Session(store(config)) as session:
        assert not session.exec(select(MentionRow).where(MentionRow.text.contains("mulled wine"))).all()

    # The feed's <script> element never reaches an email (escaping is tested in alerts/).
    bullying = next(m for m in received if "Jayden" in m.message.get_body(("plain",)).get_content())
    html = bullying.message.get_body(("html",)).get_content()
    assert "<script" not in html and "alert('x')" not in html

    # Second run: every feed answers 304 and nothing is sent again.
    before = len(received)
    assert main(["run", "--once", "--config", str(config)]) == 0
    assert len(smtp_server.messages) == before
    for path in FEEDS:
        second = feeds.requests_to(path)[-1]
        assert second.headers.get("If-None-Match"), path
    with Session(store(config)) as session:
        assert all(s.consecutive_failures == 0 for s in session.exec(select(SourceState)))


def test_message_ids_are_stable_and_distinct(config, smtp_server):
    main(["run", "--once", "--config", str(config)])
    ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == len(set(ids))
    with Session(store(config)) as session:
        stored = {row.message_id for row in session.exec(select(OutboxMessage))}
    assert set(ids) <= stored
