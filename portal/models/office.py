"""Office operations: client deletion requests, disposal records, notice batching."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class DeletionRequest(Base):
    """A client asks the office to delete a file (e.g. an employee left)."""

    __tablename__ = "deletion_requests"
    __table_args__ = (Index("ix_deletion_requests_company", "company_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id"))
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"))
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("client_users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | withdrawn
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()


class DisposalRecord(Base):
    """削除・廃棄記録: what was disposed, by whom, why — never content or numbers.

    Kept after the file and its key are gone; the disposal certificate
    (廃棄証明書) is printed from it.
    """

    __tablename__ = "disposal_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(32), unique=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    kind: Mapped[str | None] = mapped_column(String(16))  # xlsx, pdf …
    purpose_code: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column()
    proposed_by: Mapped[str] = mapped_column(String(200))
    proposed_at: Mapped[datetime] = mapped_column()
    approved_by: Mapped[str] = mapped_column(String(200))
    approved_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
    method: Mapped[str] = mapped_column(String(200), default="")


class NoticeState(Base):
    """When staff were last told about a company's new uploads (batching)."""

    __tablename__ = "notice_state"

    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), primary_key=True)
    last_notified_at: Mapped[datetime] = mapped_column(default=utcnow)  # staff: new uploads
    client_last_notified_at: Mapped[datetime] = mapped_column(default=utcnow)  # client: outcomes
