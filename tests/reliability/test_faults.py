"""Faults in sources, the SMTP relay and the store: one clear log line, health recorded, the other
sources unaffected, nothing lost."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from aiosmtpd.smtp import AuthResult
from sqlmodel import Session, select

from classifiers.rules import RulesClassifier
from monitor.config import Settings, load_config
from monitor.outbox import PERMANENT_BACKOFF
from monitor.pipeline import PollResult, Runner
from monitor.store import MentionRow, OutboxMessage, SourceState, make_engine, utcnow
from tests.reliability.servers import RawServer, endless_body, silent, trickle
from tests.support.configs import write_config
from tests.support.database import backend, database_url, sqlite_only
from tests.support.http_server import Reply, Request
from tests.support.smtp_server import SmtpServer

ROOT = Path(__file__).resolve().parents[2]
HEAD = "head@harrowgate.example.sch.uk"
DSL = "dsl@harrowgate.example.sch.uk"
DEPUTY = "deputy.dsl@harrowgate.example.sch.uk"
CAP = 1024 * 1024


@pytest.fixture
def feeds(http_server):
    """The HTTP server with the healthy source's feed on it."""
    http_server.route("/healthy.xml", Reply.file("reliability/healthy.xml",
                                                 content_type="application/rss+xml"))
    return http_server


def config(tmp_path: Path, feeds, faulty: dict | None = None, **kwargs) -> Path:
    """The healthy gazette feed, and the faulty source when given."""
    sources = [{"id": "gazette", "school": "harrowgate", "connector": "rss",
                "options": {"url": f"{feeds.url}/healthy.xml"}}]
    if faulty is not None:
        sources.append({"id": "faulty", "school": "harrowgate", **faulty})
    return write_config(tmp_path, sources, **kwargs)


def runner(path: Path, **kwargs) -> Runner:
    """A Runner on the config with the real rules classifier."""
    return Runner(load_config(path), classifier=RulesClassifier(), **kwargs)


def rss(url: str, **options) -> dict:
    """An rss source pointing at ``url``."""
    return {"connector": "rss", "options": {"url": url, **options}}


def health(run: Runner, source_id: str) -> SourceState:
    """The source's health row (an empty one if it was never written)."""
    with Session(run.engine) as session:
        state = session.get(SourceState, source_id)
        session.expunge_all()
    return state or SourceState(source_id=source_id)


def complaints(caplog, name: str, logger: str | None = None) -> list[str]:
    """WARNING-or-worse log lines that mention ``name``."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and name in r.getMessage()
            and (logger is None or r.name == logger)]


def outbox(run: Runner) -> list[OutboxMessage]:
    """Every outbox row."""
    with Session(run.engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        session.expunge_all()
    return rows


def mentions(run: Runner, source_id: str) -> list[MentionRow]:
    """The source's stored mentions."""
    with Session(run.engine) as session:
        rows = session.exec(select(MentionRow).where(MentionRow.source_id == source_id)
                            .order_by(MentionRow.id)).all()
        session.expunge_all()
    return rows


def assert_gazette_alerted(run: Runner, result: PollResult, tmp_path: Path) -> None:
    """The healthy source polled, stored and alerted as if nothing else were wrong."""
    assert result.status == "ok" and result.flagged == 1, result
    assert health(run, "gazette").consecutive_failures == 0
    run.deliver_outbox()
    assert list((tmp_path / "outbox").glob("head_harrowgate*.eml"))


def assert_failed_once(run: Runner, result: PollResult, problem: str, caplog) -> None:
    """The faulty source failed once: health recorded, cursor untouched, one log line saying why."""
    assert result.status == "failed", result
    assert problem in result.error
    state = health(run, "faulty")
    assert state.consecutive_failures == 1 and problem in state.last_error
    assert state.cursor is None
    assert not mentions(run, "faulty")
    lines = complaints(caplog, "faulty")
    assert len(lines) == 1 and problem in lines[0], lines


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of a few kilobytes per inflated megabyte, built without holding it inflated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(packer.compress(block) for _ in range(inflated >> 20)), packer.flush()])


# --- sources ----------------------------------------------------------------------------


@pytest.mark.parametrize("reply, problem", [
    pytest.param(Reply(status=500, body=b"oops", content_type="text/plain"), "server error 500",
                 id="500"),
    pytest.param(Reply(status=302, headers={"Location": "/faulty.xml"}), "too many redirects",
                 id="redirect-loop"),
    pytest.param(Reply.file("reliability/malformed.xml"), "malformed feed", id="malformed-xml"),
    pytest.param(Reply(body=gzip_bomb(64 << 20), headers={"Content-Encoding": "gzip"},
                       content_type="application/rss+xml"), f"{CAP}-byte cap", id="gzip-bomb"),
])
def test_a_failing_feed_is_recorded_and_the_others_still_alert(tmp_path, feeds, caplog, reply,
                                                               problem):
    feeds.route("/faulty.xml", reply)
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml", max_bytes=CAP)))
    failed = run.poll("faulty")
    assert_gazette_alerted(run, run.poll("gazette"), tmp_path)
    assert_failed_once(run, failed, problem, caplog)


def test_repeated_failures_back_off_without_touching_the_server(tmp_path, feeds, caplog):
    feeds.route("/faulty.xml", Reply(status=503, body=b"busy", content_type="text/plain"))
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    assert run.poll("faulty").status == "failed"
    second = run.poll("faulty")
    assert second.status == "failed" and second.retry_at is not None
    asked = len(feeds.requests_to("/faulty.xml"))
    assert run.poll("faulty").status == "waiting"
    assert len(feeds.requests_to("/faulty.xml")) == asked
    state = health(run, "faulty")
    assert state.consecutive_failures == 2 and state.not_before is not None
    assert len(complaints(caplog, "faulty")) == 2  # one line per failed poll, none while waiting


def test_a_feed_that_never_answers_times_out(tmp_path, feeds, caplog):
    release = threading.Event()

    def hang(_request: Request) -> Reply:
        release.wait(10)  # bounded: ends at teardown, or after 10 s
        return Reply(body=b"", content_type="application/rss+xml")

    feeds.route("/faulty.xml", hang)
    try:
        run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml", timeout=1)))
        failed = run.poll("faulty")
        assert_gazette_alerted(run, run.poll("gazette"), tmp_path)
    finally:
        release.set()
    assert_failed_once(run, failed, "timed out after 1s", caplog)


def test_a_feed_that_trickles_times_out(tmp_path, feeds, caplog):
    slow = RawServer(trickle(byte_every=0.25, count=24)).start()  # 6 s if nobody hangs up
    try:
        run = runner(config(tmp_path, feeds, rss(f"{slow.url}/faulty.xml", timeout=1)))
        failed = run.poll("faulty")
        gave_up_early = not slow.completed.is_set()
    finally:
        slow.stop()
    assert gave_up_early, "the connector read the whole trickle instead of timing out"
    assert_failed_once(run, failed, "timed out", caplog)


@pytest.mark.parametrize("declare_length", [True, False], ids=["declared", "streamed"])
def test_a_200_megabyte_body_is_cut_off_at_the_cap(tmp_path, feeds, caplog, declare_length):
    huge = RawServer(endless_body(200 << 20, declare_length)).start()
    try:
        run = runner(config(tmp_path, feeds, rss(f"{huge.url}/faulty.xml", max_bytes=CAP)))
        failed = run.poll("faulty")
        assert_gazette_alerted(run, run.poll("gazette"), tmp_path)
    finally:
        huge.stop()
    assert not huge.completed.is_set()
    # The client hung up long before 200 MB: what was sent is the cap plus socket buffers.
    assert huge.sent < 32 << 20, huge.sent
    assert_failed_once(run, failed, f"{CAP}-byte cap" if not declare_length else "exceeds the",
                       caplog)


@pytest.mark.parametrize("headers", ["Retry-After", "X-RateLimit-Reset"])
def test_429_waits_until_the_reset_the_server_named(tmp_path, feeds, caplog, headers):
    reset = int(time.time()) + 600
    value = "120" if headers == "Retry-After" else str(reset)
    feeds.route("/faulty.xml", Reply(status=429, headers={headers: value}, body=b"slow down",
                                     content_type="text/plain"))
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    before = utcnow()
    limited = run.poll("faulty")
    after = utcnow()
    assert_gazette_alerted(run, run.poll("gazette"), tmp_path)
    assert limited.status == "rate_limited"
    state = health(run, "faulty")
    not_before = state.not_before.replace(tzinfo=UTC)
    if headers == "Retry-After":
        assert before + timedelta(seconds=120) <= not_before <= after + timedelta(seconds=120)
    else:
        assert not_before == datetime.fromtimestamp(reset, UTC)
    # Being told to wait is not a failure of the source.
    assert state.consecutive_failures == 0 and "rate limited (429)" in state.last_error
    assert state.cursor is None
    lines = complaints(caplog, "faulty")
    assert len(lines) == 1 and "rate limited" in lines[0], lines
    asked = len(feeds.requests_to("/faulty.xml"))
    assert run.poll("faulty").status == "waiting"
    assert len(feeds.requests_to("/faulty.xml")) == asked


def test_malformed_json_from_a_json_api(tmp_path, feeds, caplog):
    feeds.route("/api/v1/timelines/tag/HarrowgateHigh",
                Reply.file("reliability/mastodon-truncated.json"))
    run = runner(config(tmp_path, feeds, {
        "connector": "mastodon", "options": {"base_url": feeds.url, "hashtags": ["HarrowgateHigh"]}}))
    failed = run.poll("faulty")
    assert_gazette_alerted(run, run.poll("gazette"), tmp_path)
    assert failed.status == "failed" and "malformed JSON" in failed.error
    state = health(run, "faulty")
    assert state.consecutive_failures == 1 and "malformed JSON" in state.last_error
    assert state.cursor is None
    # The runner says it once; the mastodon connector also logs each failing instance itself.
    lines = complaints(caplog, "faulty", logger="monitor.pipeline")
    assert len(lines) == 1 and "malformed JSON" in lines[0], lines


def test_a_page_that_is_not_a_feed_is_a_failure(tmp_path, feeds, caplog):
    feeds.route("/faulty.xml", Reply.file("reliability/not-a-feed.html", content_type="text/html"))
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    result = run.poll("faulty")
    assert result.status == "failed", "an HTML page was read as an empty feed"
    assert health(run, "faulty").consecutive_failures == 1


ENCODED = "Harrowgate High School took £95 for the café trip {n} and still no refund"


def encoded_feed(n: int, encoding: str | None, declared: str | None) -> bytes:
    """One item in a feed encoded with ``encoding`` and declaring ``declared`` (or nothing)."""
    head = f'<?xml version="1.0" encoding="{declared}"?>' if declared else '<?xml version="1.0"?>'
    text = ENCODED.format(n=n)
    doc = (f'{head}<rss version="2.0"><channel><title>Café news</title>'
           f'<item><guid>enc-{n}</guid><link>https://cafe.example.org/{n}</link>'
           f"<title>Trip £{n} at the café</title><description>{text}</description></item>"
           "</channel></rss>")
    return doc.encode(encoding or "utf-8")


ENCODINGS = [
    ("windows-1252 declared", "cp1252", "windows-1252", "application/rss+xml"),
    ("utf-8 declared", "utf-8", "utf-8", "application/rss+xml"),
    ("only the HTTP header names it", "cp1252", None, "application/rss+xml; charset=windows-1252"),
    ("declared utf-8, sent windows-1252", "cp1252", "utf-8", "application/rss+xml"),
    ("utf-16 with a byte-order mark", "utf-16", "utf-16", "application/rss+xml"),
    ("iso-8859-1 declared", "latin-1", "iso-8859-1", "text/xml"),
]


def test_a_feed_whose_encoding_changes_between_fetches_still_reads_right(tmp_path, feeds):
    feeds.route("/faulty.xml", *[
        Reply(body=encoded_feed(n, encoding, declared), content_type=ctype, etag=f'"enc-{n}"')
        for n, (_, encoding, declared, ctype) in enumerate(ENCODINGS)])
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    for n, (name, *_rest) in enumerate(ENCODINGS):
        result = run.poll("faulty")
        assert result.status == "ok" and result.new == 1, (name, result)
        stored = mentions(run, "faulty")[-1]
        assert (stored.title, stored.text) == (f"Trip £{n} at the café", ENCODED.format(n=n)), name
    assert health(run, "faulty").cursor == '{"etag": "\\"enc-5\\""}'


# --- the SMTP relay ---------------------------------------------------------------------


def smtp_options(server: SmtpServer | RawServer, tmp_path: Path, **overrides) -> dict:
    """[email.smtp] for a local relay with the test CA; the password from the environment."""
    options = {"host": "127.0.0.1", "port": server.port, "security": "starttls",
               "username": "schoolwatch", "password": {"env": "SW_FAULT_SMTP_PASSWORD"},
               "timeout": 5}
    if isinstance(server, SmtpServer):
        options["ca_file"] = server.ca_file(tmp_path)
    return {**options, **overrides}


def assert_kept(rows: list[OutboxMessage], problem: str) -> None:
    """Undelivered rows stay pending, counted, with the reason."""
    assert rows and all(r.status == "pending" and r.attempts == 1 and problem in r.last_error
                        for r in rows), [(r.status, r.attempts, r.last_error) for r in rows]


def later(minutes: int):
    """A clock ``minutes`` ahead, for a retry that backoff has made due."""
    return lambda: utcnow() + timedelta(minutes=minutes)


class AnsweringSmtpServer(SmtpServer):
    """SmtpServer that answers a failed login with 535 (tests/support's stays silent: see report)."""

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        result = super()._authenticate(server, session, envelope, mechanism, auth_data)
        return result if result.success else AuthResult(success=False, handled=False)


@pytest.fixture
def strict_smtp():
    """A real SMTP server on 127.0.0.1 that refuses bad logins out loud."""
    server = AnsweringSmtpServer().start()
    yield server
    server.stop()


def test_relay_refuses_the_login(tmp_path, feeds, strict_smtp, monkeypatch, caplog):
    smtp_server = strict_smtp
    monkeypatch.setenv("SW_FAULT_SMTP_PASSWORD", "not-the-password")
    path = config(tmp_path, feeds, smtp=smtp_options(smtp_server, tmp_path))
    run = runner(path)
    assert run.poll("gazette").queued == 1
    report = run.deliver_outbox()
    assert (report.sent, report.failed) == (0, 1)
    assert_kept(outbox(run), "refused the login: 535")
    lines = complaints(caplog, HEAD)
    assert len(lines) == 1 and "refused the login" in lines[0], lines
    assert "not-the-password" not in caplog.text
    assert not smtp_server.messages
    # The admin fixes the secret and restarts: the queued alert goes, once.
    monkeypatch.setenv("SW_FAULT_SMTP_PASSWORD", smtp_server.password)
    fixed = runner(path, engine=run.engine, clock=later(2))
    assert fixed.deliver_outbox().sent == 1
    assert [m.recipients for m in smtp_server.messages] == [[HEAD]]


def test_relay_that_never_answers_times_out(tmp_path, feeds, smtp_server, monkeypatch, caplog):
    monkeypatch.setenv("SW_FAULT_SMTP_PASSWORD", smtp_server.password)
    hung = RawServer(silent).start()
    try:
        path = config(tmp_path, feeds, smtp=smtp_options(hung, tmp_path, timeout=1))
        run = runner(path)
        assert run.poll("gazette").queued == 1
        report = run.deliver_outbox()
    finally:
        hung.stop()
    assert (report.sent, report.failed) == (0, 1)
    assert_kept(outbox(run), "timed out")
    lines = complaints(caplog, HEAD)
    assert len(lines) == 1 and "timed out" in lines[0], lines
    # The relay is back (here: a working one): the alert goes.
    good = config(tmp_path, feeds, smtp=smtp_options(smtp_server, tmp_path))
    assert runner(good, engine=run.engine, clock=later(2)).deliver_outbox().sent == 1
    assert len(smtp_server.messages) == 1


def safeguarding_feed(feeds) -> None:
    """A feed with one safeguarding post (it goes to both DSLs)."""
    feeds.route("/faulty.xml", Reply(body=(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Community</title><item>'
        "<guid>sg-1</guid><link>https://community.example.org/sg-1</link><description>"
        "Pupil at Harrowgate High School says he is bringing a knife in tomorrow"
        "</description></item></channel></rss>"), content_type="application/rss+xml"))


def test_relay_rejects_one_recipient(tmp_path, feeds, smtp_server, monkeypatch, caplog):
    monkeypatch.setenv("SW_FAULT_SMTP_PASSWORD", smtp_server.password)
    smtp_server.mailbox.reject.add(DEPUTY)
    safeguarding_feed(feeds)
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml"),
                        smtp=smtp_options(smtp_server, tmp_path)))
    assert run.poll("faulty").queued == 2 and run.poll("gazette").queued == 1
    started = utcnow()
    report = run.deliver_outbox()
    assert (report.sent, report.failed) == (2, 1)
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == sorted([DSL, HEAD])
    refused = [r for r in outbox(run) if r.recipient == DEPUTY]
    assert_kept(refused, f"refused {DEPUTY}: 550")
    # Retried slowly, not hammered: a refusal is permanent until someone fixes the address.
    assert refused[0].next_attempt_at.replace(tzinfo=UTC) >= started + PERMANENT_BACKOFF * 0.85
    lines = complaints(caplog, DEPUTY)
    assert len(lines) == 1 and "550" in lines[0], lines


def test_a_refused_recipient_is_reported_to_the_admin(tmp_path, feeds, smtp_server, monkeypatch):
    monkeypatch.setenv("SW_FAULT_SMTP_PASSWORD", smtp_server.password)
    smtp_server.mailbox.reject.add(DEPUTY)
    safeguarding_feed(feeds)
    run = runner(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml"),
                        smtp=smtp_options(smtp_server, tmp_path)))
    run.poll("faulty")
    run.deliver_outbox()
    admin = [r for r in outbox(run) if r.kind == "admin"]
    assert admin and DEPUTY in admin[0].body_text, "nobody is told the DSL's deputy gets nothing"


# --- the store ---------------------------------------------------------------------------


@contextlib.contextmanager
def locked(db: Path):
    """Another process-like connection holding the store's write lock; reads still go through."""
    if backend() == "postgresql":
        holder = sa.create_engine(database_url(db.parent), poolclass=sa.NullPool)
        try:
            with holder.connect() as connection:
                tables = ", ".join(sa.inspect(connection).get_table_names())
                # EXCLUSIVE lets SELECTs through, as SQLite's write lock does in WAL mode.
                connection.exec_driver_sql(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
                yield
                connection.rollback()
        finally:
            holder.dispose()
        return
    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def short_busy_timeout(url: str):
    """The product's engine with a 0.3 s busy (or lock) timeout instead of 30 s."""
    engine = make_engine(url)
    if backend() == "postgresql":
        setting = "SET lock_timeout = '300ms'"

        def on_connect(dbapi, _record) -> None:
            dbapi.execute(setting)
            dbapi.commit()
    else:
        def on_connect(dbapi, _record) -> None:
            dbapi.execute("PRAGMA busy_timeout = 300")
    event.listen(engine, "connect", on_connect)
    return engine


def test_a_locked_database_loses_nothing(tmp_path, feeds, caplog):
    safeguarding_feed(feeds)
    settings = load_config(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    run = Runner(settings, engine=short_busy_timeout(settings.store.url),
                 classifier=RulesClassifier())
    assert run.poll("gazette").queued == 1
    with locked(tmp_path / "schoolwatch.db"):
        assert run.poll("faulty").status == "failed"
        report = run.deliver_outbox()
    assert (report.sent, report.failed) == (0, 0)
    assert not list((tmp_path / "outbox").glob("*.eml"))
    assert health(run, "faulty").cursor is None and not mentions(run, "faulty")
    # The lock goes: the batch is fetched again and everything is stored and sent.
    result = run.poll("faulty")
    assert result.status == "ok" and result.queued == 2
    assert run.deliver_outbox().sent == 3
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_a_locked_database_fails_the_poll_without_raising(tmp_path, feeds, caplog):
    safeguarding_feed(feeds)
    settings = load_config(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    run = Runner(settings, engine=short_busy_timeout(settings.store.url),
                 classifier=RulesClassifier())
    run.poll("gazette")
    caplog.clear()
    with locked(tmp_path / "schoolwatch.db"):
        result = run.poll("faulty")
    said = "database is locked" if backend() == "sqlite" else "due to lock timeout"
    assert result.status == "failed" and said in result.error
    lines = complaints(caplog, "faulty")
    assert len(lines) == 1 and said in lines[0], lines
    # The error must not carry the post itself (SQLAlchemy puts the parameters in the message).
    assert "knife" not in caplog.text


def with_max_pages(url: str, pages: int):
    """The product's engine, each connection capped at ``pages`` pages: writes past it get SQLITE_FULL."""
    engine = make_engine(url)
    event.listen(engine, "connect",
                 lambda dbapi, _record: dbapi.execute(f"PRAGMA max_page_count = {pages}"))
    return engine


def big_feed(count: int) -> bytes:
    """``count`` flagged posts of about 6 kB each: more than a page, so each needs new pages."""
    items = "".join(
        f"<item><guid>big-{i}</guid><link>https://big.example.org/{i}</link><description>"
        f"The headteacher at Harrowgate High School is a useless liar, thread {i}. "
        f"{'Padding words for a long post. ' * 200}</description></item>" for i in range(count))
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>Big</title>{items}'
            "</channel></rss>").encode()


def nearly_full_store(tmp_path: Path, feeds) -> tuple[Settings, Runner]:
    """One stored post, then a Runner whose store cannot grow by a single page."""
    feeds.route("/faulty.xml", Reply(body=big_feed(1), etag='"big-1"'),
                Reply(body=big_feed(30), etag='"big-30"'))
    settings = load_config(config(tmp_path, feeds, rss(f"{feeds.url}/faulty.xml")))
    first = Runner(settings, classifier=RulesClassifier())
    assert first.poll("faulty").status == "ok"
    first.engine.dispose()
    with sqlite3.connect(tmp_path / "schoolwatch.db") as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = con.execute("PRAGMA page_count").fetchone()[0]
    return settings, Runner(settings, engine=with_max_pages(settings.store.url, pages),
                            classifier=RulesClassifier())


@sqlite_only("PRAGMA max_page_count fills the store; PostgreSQL has no per-connection "
             "size cap to stand in for a full disk")
def test_a_full_disk_under_the_database_loses_nothing(tmp_path, feeds, caplog):
    settings, full = nearly_full_store(tmp_path, feeds)
    # A full disk stops every source from storing; each is recorded as failed, none lose data.
    for source in ("faulty", "gazette"):
        failed = full.poll(source)
        assert failed.status == "failed" and "database or disk is full" in failed.error, failed
        state = health(full, source)
        assert state.consecutive_failures == 1 and "full" in state.last_error
        assert any("full" in line for line in complaints(caplog, f"source {source} "))
    assert health(full, "faulty").cursor == '{"etag": "\\"big-1\\""}', "cursor moved, nothing stored"
    assert health(full, "gazette").cursor is None
    assert len(mentions(full, "faulty")) == 1 and len(outbox(full)) == 1
    # Space is freed: the same batches are fetched again and stored whole.
    full.engine.dispose()
    freed = Runner(settings, classifier=RulesClassifier(), clock=later(5))
    result = freed.poll("faulty")
    assert result.status == "ok" and result.new == 29, result
    assert len(mentions(freed, "faulty")) == 30
    assert health(freed, "faulty").cursor == '{"etag": "\\"big-30\\""}'
    assert_gazette_alerted(freed, freed.poll("gazette"), tmp_path)


@sqlite_only("PRAGMA max_page_count fills the store; PostgreSQL has no per-connection "
             "size cap to stand in for a full disk")
def test_a_store_error_does_not_spread_the_post(tmp_path, feeds, caplog):
    _settings, full = nearly_full_store(tmp_path, feeds)
    caplog.clear()
    assert full.poll("faulty").status == "failed"
    assert "useless liar" not in caplog.text
    assert "useless liar" not in health(full, "faulty").last_error


def _can_mount_tmpfs() -> bool:
    """Whether this machine lets a test mount a tmpfs in a private mount namespace."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as target:
        probe = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c",
                                f"mount -t tmpfs -o size=64k tmpfs '{target}'"],
                               capture_output=True, timeout=30)
    return probe.returncode == 0


# Decided once, before the test: inside it, a failed mount is a failure, not a skip.
CAN_MOUNT_TMPFS = _can_mount_tmpfs()


@pytest.mark.skipif(not CAN_MOUNT_TMPFS, reason="needs unshare(1) and permission to mount a "
                    "tmpfs in a private mount namespace (root, or user namespaces enabled)")
def test_a_full_disk_under_the_file_outbox_keeps_the_mail(tmp_path, feeds):
    path = config(tmp_path, feeds)
    spool = tmp_path / "outbox"
    spool.mkdir()
    # A 64 kB tmpfs, filled up, mounted over the outbox folder for this one run only.
    script = (f"mount -t tmpfs -o size=64k tmpfs '{spool}' || exit 99; "
              f"dd if=/dev/zero of='{spool}/filler' bs=4k 2>/dev/null; "
              f"exec '{sys.executable}' -m monitor run --once --config '{path}'")
    done = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 99, f"the tmpfs could not be mounted: {done.stderr[:300]}"
    assert done.returncode == 0, done.stderr
    assert "1 failed; 1 still queued for retry" in done.stdout, done.stdout
    problems = [line for line in done.stderr.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(problems) == 1 and "No space left on device" in problems[0], problems
    assert not list(spool.iterdir())  # the tmpfs is gone with the namespace
    run = runner(path, clock=later(2))
    assert_kept(outbox(run), "No space left on device")
    assert run.deliver_outbox().sent == 1
    assert len(list(spool.glob("head_harrowgate*.eml"))) == 1
