"""The first released schema: every table, and the append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex, CreateTable

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_APPEND_ONLY = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$",
        "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
        # Row triggers do not fire on TRUNCATE, which would empty the log in one statement.
        "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    ),
}
_DROP_APPEND_ONLY = {
    "sqlite": ("DROP TRIGGER IF EXISTS audit_log_no_update",
               "DROP TRIGGER IF EXISTS audit_log_no_delete"),
    "postgresql": ("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
                   "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
                   "DROP FUNCTION IF EXISTS audit_log_append_only()"),
}


def schema() -> sa.MetaData:
    """The tables of this revision, frozen here so that later model changes cannot alter it."""
    metadata = sa.MetaData()
    tz = sa.DateTime(timezone=True)
    sa.Table(
        "source_state", metadata,
        sa.Column("source_id", sa.String(), primary_key=True),
        sa.Column("cursor", sa.Text()),
        sa.Column("last_poll_at", tz),
        sa.Column("last_success_at", tz),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_error_at", tz),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("not_before", tz),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("disabled_config_hash", sa.String()),
        sa.Column("failure_notified", sa.Boolean(), nullable=False),
        sa.Column("budget_day", sa.String()),
        sa.Column("budget_spent", sa.Integer(), nullable=False),
    )
    sa.Table(
        "seen_key", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("relevant", sa.Boolean(), nullable=False),
        sa.Column("seen_at", tz, nullable=False),
        sa.UniqueConstraint("platform", "external_id"),
        sa.Index("ix_seen_key_seen_at", "seen_at"),
    )
    sa.Table(
        "incident", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("school_id", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("severity", sa.String()),
        sa.Column("subtype", sa.String()),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("first_seen", tz, nullable=False),
        sa.Column("last_seen", tz, nullable=False),
        sa.Column("mention_count", sa.Integer(), nullable=False),
        sa.Column("platforms", sa.JSON()),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("legal_hold", sa.Boolean(), nullable=False),
        sa.Column("legal_hold_reason", sa.Text()),
        sa.Index("ix_incident_category", "category"),
        sa.Index("ix_incident_school_id", "school_id"),
        sa.Index("ix_incident_status", "status"),
    )
    sa.Table(
        "mention", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("school_id", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("canonical_url", sa.Text(), nullable=False),
        sa.Column("author", sa.String()),
        sa.Column("title", sa.Text()),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_hash", sa.String(), nullable=False),
        sa.Column("published_at", tz, nullable=False),
        sa.Column("fetched_at", tz, nullable=False),
        sa.Column("raw", sa.JSON()),
        sa.Column("incident_id", sa.Integer(), sa.ForeignKey("incident.id")),
        sa.UniqueConstraint("platform", "external_id"),
        sa.Index("ix_mention_incident_id", "incident_id"),
        sa.Index("ix_mention_school_hash", "school_id", "text_hash"),
        sa.Index("ix_mention_school_url", "school_id", "canonical_url"),
        sa.Index("ix_mention_source_id", "source_id"),
    )
    sa.Table(
        "assessment", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mention_id", sa.Integer(), sa.ForeignKey("mention.id"), nullable=False),
        sa.Column("classifier", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("severity", sa.String()),
        sa.Column("subtype", sa.String()),
        sa.Column("scores", sa.JSON()),
        sa.Column("reasons", sa.JSON()),
        sa.Column("created_at", tz, nullable=False),
        sa.UniqueConstraint("mention_id"),
        sa.Index("ix_assessment_category", "category"),
    )
    sa.Table(
        "outbox", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dedupe_key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("incident_id", sa.Integer(), sa.ForeignKey("incident.id")),
        sa.Column("school_id", sa.String()),
        sa.Column("role", sa.String()),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("recipient", sa.String(), nullable=False),
        sa.Column("sender", sa.String(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text()),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("headers", sa.JSON()),
        sa.Column("images", sa.JSON()),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", tz, nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("sent_at", tz),
        sa.Column("leased_until", tz),
        sa.UniqueConstraint("dedupe_key"),
        sa.Index("ix_outbox_incident_id", "incident_id"),
        sa.Index("ix_outbox_next_attempt_at", "next_attempt_at"),
        sa.Index("ix_outbox_status", "status"),
    )
    sa.Table(
        "audit_log", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", tz, nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("object_type", sa.String()),
        sa.Column("object_id", sa.String()),
        sa.Column("detail", sa.JSON()),
        sa.Index("ix_audit_log_at", "at"),
    )
    sa.Table(
        "suppression_rule", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("school_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("removed_by", sa.String()),
        sa.Column("removed_at", tz),
        sa.Index("ix_suppression_rule_school_id", "school_id"),
    )
    sa.Table(
        "feedback_example", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mention_id", sa.Integer(), sa.ForeignKey("mention.id")),
        sa.Column("incident_id", sa.Integer()),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("predicted", sa.String(), nullable=False),
        sa.Column("given_by", sa.String(), nullable=False),
        sa.Column("given_at", tz, nullable=False),
        sa.Index("ix_feedback_example_incident_id", "incident_id"),
        sa.Index("ix_feedback_example_mention_id", "mention_id"),
    )
    sa.Table(
        "evidence_item", metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mention_id", sa.Integer(), sa.ForeignKey("mention.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("incident_id", sa.Integer(),
                  sa.ForeignKey("incident.id", ondelete="SET NULL")),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("sha256", sa.String()),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("media_type", sa.String()),
        sa.Column("content", sa.LargeBinary()),
        sa.Column("source_url", sa.Text()),
        sa.Column("captured_at", tz, nullable=False),
        sa.Column("note", sa.Text()),
        sa.Index("ix_evidence_item_captured_at", "captured_at"),
        sa.Index("ix_evidence_item_incident_id", "incident_id"),
        sa.Index("ix_evidence_item_mention_id", "mention_id"),
    )
    return metadata


def make_append_only(connection: Connection) -> None:
    """Install the triggers that refuse UPDATE and DELETE on the audit log (idempotent)."""
    for statement in _APPEND_ONLY.get(connection.dialect.name, ()):
        connection.exec_driver_sql(statement)


def upgrade() -> None:
    """Create every table, then make the audit log append-only."""
    # DDL constructs rather than create_all, so that `alembic upgrade --sql` works too.
    for table in schema().sorted_tables:
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda index: index.name or ""):
            op.execute(CreateIndex(index))
    for statement in _APPEND_ONLY.get(op.get_context().dialect.name, ()):
        op.execute(statement)


def downgrade() -> None:
    """Drop everything this revision created."""
    for statement in _DROP_APPEND_ONLY.get(op.get_context().dialect.name, ()):
        op.execute(statement)
    for table in reversed(schema().sorted_tables):
        op.drop_table(table.name)
