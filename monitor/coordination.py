"""Several daemons on one database: each source is polled by one of them, once per interval."""
from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel

# Identifies this process in leases, so a replica only releases what it holds.
HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SourceLease(SQLModel, table=True):
    """Who is polling a source now, and when its last poll started."""

    __tablename__ = "source_lease"

    source_id: str = Field(primary_key=True)
    holder: str | None = None
    leased_until: datetime | None = None
    last_started_at: datetime | None = None


def claim(engine: Engine, source_id: str, now: datetime, lease: timedelta,
          min_gap: timedelta) -> bool:
    """Take the source's lease when it is free and its last poll is ``min_gap`` old."""
    _ensure_row(engine, source_id)
    with Session(engine) as session:
        # One conditional UPDATE: the database lets exactly one replica through.
        taken = session.exec(
            update(SourceLease)
            .where(SourceLease.source_id == source_id,
                   or_(SourceLease.leased_until.is_(None), SourceLease.leased_until < now),
                   or_(SourceLease.last_started_at.is_(None),
                       SourceLease.last_started_at <= now - min_gap))
            .values(holder=HOLDER, leased_until=now + lease, last_started_at=now)
        ).rowcount
        session.commit()
    return bool(taken)


def release(engine: Engine, source_id: str) -> None:
    """Give the lease back once the poll is stored."""
    with Session(engine) as session:
        session.exec(update(SourceLease)
                     .where(SourceLease.source_id == source_id, SourceLease.holder == HOLDER)
                     .values(holder=None, leased_until=None))
        session.commit()


def _ensure_row(engine: Engine, source_id: str) -> None:
    with Session(engine) as session:
        if session.get(SourceLease, source_id) is not None:
            return
        session.add(SourceLease(source_id=source_id))
        try:
            session.commit()
        except IntegrityError:  # another replica created it first
            session.rollback()
