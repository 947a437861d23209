"""The evidence table: hashed bytes captured from a mention, kept in the database."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

from monitor import retention
from monitor.store import utcnow

RECORD, HTML, SCREENSHOT = "record", "html", "screenshot"
KINDS = (RECORD, HTML, SCREENSHOT)


class EvidenceItem(SQLModel, table=True):
    """One captured item, or a note saying why an item could not be captured."""

    __tablename__ = "evidence_item"

    id: int | None = Field(default=None, primary_key=True)
    # Cascades too, so a purge or erasure that never imported this module still succeeds.
    mention_id: int = Field(sa_column=Column(
        Integer, ForeignKey("mention.id", ondelete="CASCADE"), nullable=False, index=True))
    incident_id: int | None = Field(default=None, sa_column=Column(
        Integer, ForeignKey("incident.id", ondelete="SET NULL"), index=True))
    kind: str  # record, html, screenshot
    # Hash and size of ``content`` as captured; None when nothing was captured (see note).
    sha256: str | None = None
    size: int = 0
    media_type: str | None = None
    # The bytes themselves, so the evidence outlives the post being deleted at the source.
    content: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    source_url: str | None = Field(default=None, sa_column=Column(Text))
    captured_at: datetime = Field(default_factory=utcnow, index=True)
    note: str | None = Field(default=None, sa_column=Column(Text))


# Retention and erasure delete a mention's evidence with the mention (the FK requires it).
if EvidenceItem not in retention.MENTION_CHILDREN:
    retention.MENTION_CHILDREN.append(EvidenceItem)

