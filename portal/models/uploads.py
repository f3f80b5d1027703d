"""Uploads, their history and the purposes of use."""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
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
        # (…, created_at, id): the room and the inbox list newest first with
        # LIMIT, straight from the index (migration 0009, bench/growth.py).
        Index("ix_uploads_company_created", "company_id", "created_at", "id"),
        Index("ix_uploads_created", "created_at", "id"),
        Index("ix_uploads_status_created", "status", "created_at", "id"),
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
    # Set while a worker scans this upload and renewed by its heartbeat: any
    # other worker given the same job meanwhile leaves it alone.  Expired =
    # that worker died; the reconciler hands the scan to another one.
    lease_until: Mapped[datetime | None] = mapped_column()
    scanned_at: Mapped[datetime | None] = mapped_column()
    # Scanned while received (portal.intake, scanners.clamd.StreamScan): the
    # client app streamed the bytes to clamd as they arrived.  ``prescan`` is
    # NULL (not tried), ``pending`` until the client app records clamd's
    # answer (at the latest by ``prescan_until``), then ``clean``,
    # ``infected``, ``refused`` (with ``prescan_reason``/``_signature``) or
    # ``failed``.  Only advice to the worker's scan, which still decides: it
    # takes the answer for the bytes it reads only if their digest is the
    # recorded one, and scans itself after ``failed`` or a missed deadline.
    prescan: Mapped[str | None] = mapped_column(String(16))
    prescan_reason: Mapped[str | None] = mapped_column(String(32))
    prescan_signature: Mapped[str | None] = mapped_column(String(200))
    prescan_until: Mapped[datetime | None] = mapped_column()
    # Check-digit report for csv/xlsx/ods (NULL: not a spreadsheet or not checked).
    # Counts and cell positions only, never the numbers: see scanners.numbers_scan.
    mynumber_found: Mapped[int | None] = mapped_column(Integer)
    mynumber_invalid: Mapped[str | None] = mapped_column(Text)  # JSON

    # Opening with the password (portal.unlock; an office setting, off by
    # default).  On a ``refused``/``encrypted`` upload: its drop-zone object is
    # kept until ``unlock_until`` (then the reconciler deletes it), and
    # ``unlock_attempts`` counts wrong passwords.  On an upload made by
    # opening one: ``opened_from`` is the protected original's id.
    unlock_until: Mapped[datetime | None] = mapped_column()
    unlock_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    opened_from: Mapped[str | None] = mapped_column(String(32), index=True)

    vault_key: Mapped[str | None] = mapped_column(String(128))
    vault_key_id: Mapped[str | None] = mapped_column(String(64))
    vault_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    vault_ciphertext_sha256: Mapped[str | None] = mapped_column(String(64))
    vaulted_at: Mapped[datetime | None] = mapped_column()
    # A ``clean`` upload's vault copy, sealed during the scan pass (see
    # portal.pipeline): the pull promotes it.  Its data key, like the vault
    # object's, exists only wrapped, here.
    staged_key: Mapped[str | None] = mapped_column(String(128))
    staged_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    staged_ciphertext_sha256: Mapped[str | None] = mapped_column(String(64))

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


class TusUpload(Base):
    """A resumable (tus 1.0.0) upload in progress; see :mod:`portal.tus`.

    ``offset`` counts the bytes stored in committed parts (:class:`TusPart`);
    it only ever advances by compare-and-set once a part's encrypted object
    is committed.  ``received`` counts every byte read from PATCH bodies,
    kept or not (so re-sent data is visible).  Once the parts are assembled
    into an ordinary upload, ``upload_id`` names it and the parts are gone.
    The file name lives here (as in ``uploads``), never in object keys.
    """

    __tablename__ = "tus_uploads"
    __table_args__ = (Index("ix_tus_uploads_expires", "expires_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("client_users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose_code: Mapped[str] = mapped_column(ForeignKey("purposes.code"))
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    parts: Mapped[int] = mapped_column(Integer, default=0)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    upload_id: Mapped[str | None] = mapped_column(ForeignKey("uploads.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class TusPart(Base):
    """One committed, encrypted piece of a tus upload: bytes
    ``[offset, offset + size)`` in drop-zone object ``key`` (``tus/<id>/…``)."""

    __tablename__ = "tus_parts"
    __table_args__ = (UniqueConstraint("tus_id", "offset", name="uq_tus_parts_offset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tus_id: Mapped[str] = mapped_column(ForeignKey("tus_uploads.id"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
