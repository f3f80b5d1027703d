"""The handling log (取扱記録): append-only and hash-chained."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class AuditEvent(Base):
    """Who did what, when, from where, on what.  Never file content or numbers.

    ``hash`` = SHA-256 over the canonical form of this row and ``prev_hash``,
    so editing, deleting, inserting or reordering rows breaks the chain.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_upload", "upload_id"),
        Index("ix_audit_company_at", "company_id", "at"),
        # The handling-log search filters (migration 0009, bench/growth.py).
        # An index on one column also orders by id (the rowid), so "newest
        # first, LIMIT 50" needs no sort.  The action filter is a
        # case-insensitive LIKE prefix: SQLite uses only a NOCASE index for it,
        # so migration 0009 creates this one as ``action COLLATE NOCASE``
        # (reflected as a plain index on ``action``: SQLAlchemy has no SQLite
        # option for an index collation); on PostgreSQL it is created with
        # text_pattern_ops.  (A ``postgresql_ops`` option here would make every
        # process load SQLAlchemy's PostgreSQL dialect: 2 MB.)  ``id`` follows
        # ``action``: a prefix spans several actions, and the search reads each
        # one newest first with LIMIT (portal.auditexport.newest_ids_by_action);
        # PostgreSQL needs the column for that order, SQLite has it anyway.
        Index("ix_audit_company", "company_id"),
        Index("ix_audit_actor", "actor_kind", "actor_id"),
        Index("ix_audit_actor_label", "actor_label"),
        Index("ix_audit_addr", "remote_addr"),
        Index("ix_audit_action", "action", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(64))
    actor_kind: Mapped[str] = mapped_column(String(16))  # client | staff | system
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_label: Mapped[str] = mapped_column(String(200), default="")
    company_id: Mapped[int | None] = mapped_column(Integer)
    upload_id: Mapped[str | None] = mapped_column(String(32))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
