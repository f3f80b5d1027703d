"""Uploads, their history and the purposes of use."""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Date, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .accounts import ClientUser, Company
from .base import Base, utcnow


class Status(StrEnum):
    """The statuses of ../shared/contract.md, in life order."""

    RECEIVED = "received"
    SCANNING = "scanning"
    CLEAN = "clean"
    INFECTED = "infected"
    REFUSED = "refused"
    VAULTED = "vaulted"
    DISPOSED = "disposed"


PENDING_SCAN = (Status.RECEIVED, Status.SCANNING)


class Purpose(Base):
    """A purpose of use (利用目的).  Labels are data, edited by the manager."""

    __tablename__ = "purposes"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    label_ja: Mapped[str] = mapped_column(String(100))
    label_en: Mapped[str] = mapped_column(String(100))
    retention_years: Mapped[int] = mapped_column(Integer, default=7)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(default=True)

    def label(self, lang: str) -> str:
        return self.label_ja if lang == "ja" else self.label_en


class Upload(Base):
    """One uploaded file.

    Invariants kept by :mod:`portal.intake`: a ``received``/``scanning``/
    ``clean`` upload has exactly one drop-zone object; a ``vaulted`` one has
    exactly one vault object (``vault_key``) and no drop-zone object; the
    vault object's data key exists only wrapped, in ``vault_wrapped_key``,
    so that destroying it shreds every copy of the object.
    """

    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_company_created", "company_id", "created_at"),
        Index("ix_uploads_status_next", "status", "next_attempt_at"),
        Index("ix_uploads_retention", "status", "retention_until"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"))
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("client_users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose_code: Mapped[str] = mapped_column(ForeignKey("purposes.code"))
    status: Mapped[str] = mapped_column(String(16), default=Status.RECEIVED)
    reason: Mapped[str | None] = mapped_column(String(32))
    signature: Mapped[str | None] = mapped_column(String(200))
    sniffed: Mapped[str] = mapped_column(String(16), default="unknown")
    kind: Mapped[str | None] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    dropzone_key: Mapped[str | None] = mapped_column(String(128))
    scan_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    scanned_at: Mapped[datetime | None] = mapped_column()
    # Check-digit report for csv/xlsx/ods (NULL: not a spreadsheet or not checked).
    # Counts and cell positions only, never the numbers: see scanners.numbers_scan.
    mynumber_found: Mapped[int | None] = mapped_column(Integer)
    mynumber_invalid: Mapped[str | None] = mapped_column(Text)  # JSON

    vault_key: Mapped[str | None] = mapped_column(String(128))
    vault_key_id: Mapped[str | None] = mapped_column(String(64))
    vault_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    vault_ciphertext_sha256: Mapped[str | None] = mapped_column(String(64))
    vaulted_at: Mapped[datetime | None] = mapped_column()

    # Retention (保管期限) and disposal (廃棄): a handler proposes, a different
    # manager approves; approval destroys the object and its wrapped key.
    retention_until: Mapped[date | None] = mapped_column(Date)
    disposal_proposed_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    disposal_proposed_at: Mapped[datetime | None] = mapped_column()
    disposal_reason: Mapped[str | None] = mapped_column(Text)
    disposed_at: Mapped[datetime | None] = mapped_column()

    company: Mapped[Company] = relationship()
    uploaded_by: Mapped[ClientUser | None] = relationship()
    purpose: Mapped[Purpose] = relationship()
    events: Mapped[list[UploadEvent]] = relationship(
        back_populates="upload", order_by="UploadEvent.id"
    )

    def mynumber_report(self) -> dict[str, Any] | None:
        """``{"found", "invalid": [{"sheet", "row", "column"}], "truncated"}`` or None.

        Cell positions only, never digits (../shared/contract.md).
        """
        if self.mynumber_found is None:
            return None
        try:
            stored = json.loads(self.mynumber_invalid or "{}")
        except ValueError:
            stored = {}
        if isinstance(stored, list):
            stored = {"invalid": stored}
        cells = [
            {"sheet": str(c.get("sheet", "")), "row": int(c.get("row", 0)),
             "column": str(c.get("column", ""))}
            for c in stored.get("invalid", []) if isinstance(c, dict)
        ]
        return {"found": self.mynumber_found, "invalid": cells,
                "truncated": bool(stored.get("truncated", False))}


class UploadEvent(Base):
    """One step of an upload's chain of custody, as the client sees it."""

    __tablename__ = "upload_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    upload: Mapped[Upload] = relationship(back_populates="events")
