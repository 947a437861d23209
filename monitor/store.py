"""The database: sqlmodel tables and the engine. SQLite by default, any SQLAlchemy URL."""
from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Engine, Index, Text, UniqueConstraint, event
from sqlmodel import Field, Session, SQLModel, create_engine


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to naive datetimes read back from SQLite."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class SourceState(SQLModel, table=True):
    """Where each source is up to and how healthy it is."""

    __tablename__ = "source_state"

    source_id: str = Field(primary_key=True)
    cursor: str | None = Field(default=None, sa_column=Column(Text))
    last_poll_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    # Set by RateLimited or backoff: do not poll before this time.
    not_before: datetime | None = None
    # Set by AuthFailed: the source sleeps until its config (hash) changes.
    disabled_reason: str | None = Field(default=None, sa_column=Column(Text))
    disabled_config_hash: str | None = None
    # True once the admin was told about the current run of failures.
    failure_notified: bool = False
    # Paid or quota-limited platforms: units spent on ``budget_day`` (UTC date).
    budget_day: str | None = None
    budget_spent: int = 0


class SeenKey(SQLModel, table=True):
    """Every item ever fetched, by platform id only, so it is not processed twice.

    Items that are not about the school keep nothing but this key.
    """

    __tablename__ = "seen_key"
    __table_args__ = (UniqueConstraint("platform", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    external_id: str
    source_id: str
    relevant: bool
    seen_at: datetime = Field(default_factory=utcnow, index=True)


class Incident(SQLModel, table=True):
    """One story: every mention of it, however many times it was posted."""

    __tablename__ = "incident"

    id: int | None = Field(default=None, primary_key=True)
    school_id: str = Field(index=True)
    category: str = Field(index=True)
    severity: str | None = None
    subtype: str | None = None
    status: str = Field(default="open", index=True)
    title: str = Field(sa_column=Column(Text, nullable=False))
    first_seen: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)
    mention_count: int = 0
    platforms: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    # Bumped each time an update is sent (escalation), so Message-IDs stay unique.
    revision: int = 0
    # How many escalation steps have gone out for lack of an acknowledgement.
    escalation_level: int = 0
    # Under a legal hold nothing of the incident is purged or erased.
    legal_hold: bool = False
    legal_hold_reason: str | None = Field(default=None, sa_column=Column(Text))


class MentionRow(SQLModel, table=True):
    """A mention about a watched school."""

    __tablename__ = "mention"
    __table_args__ = (
        UniqueConstraint("platform", "external_id"),
        Index("ix_mention_school_url", "school_id", "canonical_url"),
        Index("ix_mention_school_hash", "school_id", "text_hash"),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    external_id: str
    source_id: str = Field(index=True)
    school_id: str
    url: str = Field(sa_column=Column(Text, nullable=False))
    canonical_url: str = Field(sa_column=Column(Text, nullable=False))
    author: str | None = None
    title: str | None = Field(default=None, sa_column=Column(Text))
    text: str = Field(sa_column=Column(Text, nullable=False))
    text_hash: str
    published_at: datetime
    fetched_at: datetime
    # The platform's own payload, kept only for flagged mentions (it is the evidence).
    raw: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    incident_id: int | None = Field(default=None, foreign_key="incident.id", index=True)


class AssessmentRow(SQLModel, table=True):
    """The classifier's verdict on a mention."""

    __tablename__ = "assessment"

    id: int | None = Field(default=None, primary_key=True)
    mention_id: int = Field(foreign_key="mention.id", unique=True)
    classifier: str
    category: str = Field(index=True)
    severity: str | None = None
    subtype: str | None = None
    scores: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON))
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class OutboxMessage(SQLModel, table=True):
    """One rendered message for one recipient, kept until it is delivered."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    # Unique per purpose and recipient, so a retried transaction never queues twice.
    dedupe_key: str = Field(unique=True)
    kind: str  # alert, update, admin
    incident_id: int | None = Field(default=None, foreign_key="incident.id", index=True)
    school_id: str | None = None
    role: str | None = None
    channel: str
    recipient: str
    sender: str
    subject: str = Field(sa_column=Column(Text, nullable=False))
    body_text: str = Field(sa_column=Column(Text, nullable=False))
    body_html: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    # Inline images (Content-ID -> base64 PNG), e.g. a digest's trend chart.
    images: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default="pending", index=True)  # pending, sent
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    # Row lease for several senders sharing one database.
    leased_until: datetime | None = None


class AuditEntry(SQLModel, table=True):
    """Append-only record of who did what, and what the daemon did on its own."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str
    object_type: str | None = None
    object_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys.

    On PostgreSQL, writing transactions take turns, as they do on SQLite (see _one_writer).
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "postgresql":
            _one_writer(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    _wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _wal(cursor: Any) -> None:
    # Switching a new file to WAL needs it alone for a moment and SQLite returns "locked" at
    # once instead of waiting, so a process starting next to another one retries for a while.
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# Any fixed number: the key of the advisory lock a writing transaction holds until it ends.
_WRITER_LOCK = "SELECT pg_advisory_xact_lock(5792001)"
_HOLDS_WRITER_LOCK = "schoolwatch.writer_lock"
_WRITES = ("INSERT", "UPDATE", "DELETE")


def _one_writer(engine: Engine) -> None:
    """Make a transaction's first write wait for the others to end, as SQLite's write lock does.

    The pipeline reads, then writes on what it read (find the story's incident, else open
    one); SQLite runs such transactions one at a time, PostgreSQL would interleave them.
    """
    @event.listens_for(engine, "before_cursor_execute")
    def _lock(connection: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if connection.info.get(_HOLDS_WRITER_LOCK) \
                or not statement.lstrip()[:6].upper().startswith(_WRITES):
            return
        cursor.execute(_WRITER_LOCK)
        connection.info[_HOLDS_WRITER_LOCK] = True

    def _released(connection: Any) -> None:
        connection.info.pop(_HOLDS_WRITER_LOCK, None)

    event.listen(engine, "commit", _released)
    event.listen(engine, "rollback", _released)
    event.listen(engine.pool, "checkin",
                 lambda _dbapi, record: record.info.pop(_HOLDS_WRITER_LOCK, None))


def init_db(engine: Engine) -> None:
    """Migrate the database to the current schema; the audit log is append-only in it."""
    # Imported here: Alembic costs a tenth of a second that commands without a database skip.
    from monitor.migrations import upgrade_engine

    upgrade_engine(engine)


def audit(session: Session, actor: str, action: str, object_type: str | None = None,
          object_id: Any = None, at: datetime | None = None, **detail: Any) -> None:
    """Add an audit entry to the session's transaction."""
    session.add(AuditEntry(actor=actor, action=action, object_type=object_type,
                           object_id=None if object_id is None else str(object_id),
                           detail=detail, at=at or utcnow()))
