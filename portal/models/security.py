"""Server-side sessions, password history, recovery codes, policies, throttling."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class WebSession(Base):
    """One signed-in browser.  The cookie carries a random token; only its
    SHA-256 is stored, so a database reader cannot hijack sessions."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_account", "kind", "account_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(token)
    kind: Mapped[str] = mapped_column(String(16))  # client | staff
    account_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()  # the absolute limit
    revoked_at: Mapped[datetime | None] = mapped_column()
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(200), default="")


class PasswordHistory(Base):
    __tablename__ = "password_history"
    __table_args__ = (Index("ix_password_history_account", "kind", "account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int] = mapped_column(Integer)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecoveryCode(Base):
    """Single-use second-factor recovery codes, stored as SHA-256 (the codes
    are 50+ bits of randomness each, so a fast hash is enough)."""

    __tablename__ = "recovery_codes"
    __table_args__ = (Index("ix_recovery_codes_account", "kind", "account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int] = mapped_column(Integer)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column()


class Policy(Base):
    """Office-wide settings the manager edits (JSON values), e.g. the password policy."""

    __tablename__ = "policies"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="{}")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AddressFailure(Base):
    """Failed sign-ins per source address in the current window."""

    __tablename__ = "address_failures"

    addr: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(default=utcnow)
    count: Mapped[int] = mapped_column(Integer, default=0)
