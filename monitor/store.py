"""The database: sqlmodel tables and the engine. SQLite by default, any SQLAlchemy URL."""
from __future__ import annotations

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
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)
_APPEND_ONLY_POSTGRES = (
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$",
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
)


# Any constant both replicas agree on: it names the schema-setup lock.
_SCHEMA_LOCK = 0x5C4001


def init_db(engine: Engine) -> None:
    """Create any missing tables and indexes and the audit-log triggers, all or nothing."""
    statements = {"sqlite": _APPEND_ONLY_SQLITE, "postgresql": _APPEND_ONLY_POSTGRES}
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # pysqlite runs DDL outside any transaction unless told otherwise: a daemon
            # killed mid-way would leave a table without its index for good. IMMEDIATE
            # also makes daemons starting together take turns.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            # Daemons starting together take turns here too, until this transaction ends.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        SQLModel.metadata.create_all(connection)
        for statement in statements.get(engine.dialect.name, ()):
            connection.exec_driver_sql(statement)
        connection.commit()


def audit(session: Session, actor: str, action: str, object_type: str | None = None,
          object_id: Any = None, at: datetime | None = None, **detail: Any) -> None:
    """Add an audit entry to the session's transaction."""
    session.add(AuditEntry(actor=actor, action=action, object_type=object_type,
                           object_id=None if object_id is None else str(object_id),
                           detail=detail, at=at or utcnow()))
