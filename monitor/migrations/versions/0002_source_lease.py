"""Source leases, so that several daemons can share one database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the source_lease table."""
    op.create_table(
        "source_lease",
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("source_id"),
    )


def downgrade() -> None:
    """Drop the source_lease table."""
    op.drop_table("source_lease")
