"""The store behaves the same on SQLite and PostgreSQL where the pipeline depends on it."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

from sqlmodel import Session, func, select

from monitor.evidence.model import EvidenceItem
from monitor.privacy import find_subject
from monitor.store import AuditEntry, Incident, MentionRow, OutboxMessage


def count(engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(AuditEntry)).one()


def test_a_second_writer_waits_for_the_first_to_commit_and_readers_do_not(engine):
    first = Session(engine)
    first.add(AuditEntry(actor="first", action="write"))
    first.flush()  # the first transaction now holds the write lock
    done = threading.Event()

    def second() -> None:
        with Session(engine) as session:
            session.add(AuditEntry(actor="second", action="write"))
            session.commit()
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    try:
        assert not done.wait(0.5), "the second writer did not wait for the first"
        assert count(engine) == 0  # reading is not blocked, and sees nothing uncommitted
    finally:
        first.commit()
        first.close()
    thread.join(30)
    assert done.is_set() and count(engine) == 2


def test_datetimes_come_back_aware_in_utc_whatever_offset_went_in(engine):
    at = datetime(2025, 10, 26, 1, 30, tzinfo=timezone(timedelta(hours=1)))  # 00:30 UTC
    with Session(engine) as session:
        session.add(AuditEntry(actor="dsl", action="x", at=at))
        session.commit()
    with Session(engine) as session:
        stored = session.exec(select(AuditEntry.at)).one()
        assert stored == at and stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
        later = at + timedelta(seconds=1)
        assert session.exec(select(func.count()).select_from(AuditEntry)
                            .where(AuditEntry.at < later)).one() == 1


def test_json_binary_and_long_text_round_trip(engine):
    payload = {"nested": {"list": [1, 2.5, None, True]},
               "quote": "Harrowgate\u2019s \u00e9l\u00e8ves"}
    content = bytes(range(256)) * 64
    with Session(engine) as session:
        incident = Incident(school_id="harrowgate", category="safeguarding", title="T" * 10_000,
                            platforms=["rss", "x"])
        session.add(incident)
        session.flush()
        mention = MentionRow(platform="rss", external_id="1", source_id="s", school_id="harrowgate",
                             url="https://example.org/" + "a" * 3000, canonical_url="https://x",
                             author="@Some_One", text="x" * 100_000, text_hash="h",
                             published_at=datetime.now(UTC), fetched_at=datetime.now(UTC),
                             raw=payload, incident_id=incident.id)
        session.add(mention)
        session.flush()
        session.add(EvidenceItem(mention_id=mention.id, kind="html", content=content,
                                 size=len(content)))
        session.commit()
    with Session(engine) as session:
        assert session.exec(select(MentionRow.raw)).one() == payload
        assert session.exec(select(EvidenceItem.content)).one() == content
        assert session.exec(select(Incident.platforms)).one() == ["rss", "x"]
        assert len(session.exec(select(MentionRow.text)).one()) == 100_000


def test_finding_a_subject_ignores_case_and_treats_like_wildcards_as_text(engine):
    now = datetime.now(UTC)
    with Session(engine) as session:
        for number, author in enumerate(["@Some_One", "@someXone", "@SOME_ONE", "@back\\slash"]):
            session.add(MentionRow(platform="x", external_id=str(number), source_id="s",
                                   school_id="harrowgate", url="https://x", canonical_url="https://x",
                                   author=author, text="a post", text_hash=str(number),
                                   published_at=now, fetched_at=now))
            session.add(OutboxMessage(dedupe_key=str(number), kind="alert", channel="file",
                                      recipient="dsl@example.org", sender="s@example.org",
                                      subject="Alert", body_text=f"Posted by {author}",
                                      message_id=f"<{number}@example.org>"))
        session.commit()
        found = find_subject(session, "some_one")
        assert sorted(m.author for m in found.mentions) == ["@SOME_ONE", "@Some_One"]
        assert sorted(m.dedupe_key for m in found.messages) == ["0", "2"]
        assert [m.author for m in find_subject(session, "back\\slash").mentions] == [
            "@back\\slash"]
