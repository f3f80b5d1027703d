"""Companies, their client users, office staff and API tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Column, ForeignKey, Integer, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, utcnow

staff_companies = Table(
    "staff_companies",
    Base.metadata,
    Column("staff_id", ForeignKey("staff.id", ondelete="CASCADE"), primary_key=True),
    Column("company_id", ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True),
)


class Company(Base):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Policy: pull clean uploads into the vault without waiting for staff.
    auto_pull: Mapped[bool] = mapped_column(Boolean, default=False)
    # Policy: every user of this company must use a second factor (TOTP).
    require_2fa: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    users: Mapped[list[ClientUser]] = relationship(back_populates="company")


class Credentials:
    """What every person who signs in has, client or staff: one shape, so the
    sign-in, lockout and session code treats both alike."""

    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_last_step: Mapped[int | None] = mapped_column(Integer)  # a code is accepted once
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    throttled_until: Mapped[datetime | None] = mapped_column()
    locked_at: Mapped[datetime | None] = mapped_column()  # cleared by a manager
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    # UI, e-mail and PDF language: "ja" (default) or "en" (portal.i18n.LANGS).
    language: Mapped[str] = mapped_column(String(8), default="ja", server_default="ja")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClientUser(Credentials, Base):
    """An HR person at a client company.  Sees only their company's room."""

    __tablename__ = "client_users"
    __table_args__ = (UniqueConstraint("company_id", "login"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    login: Mapped[str] = mapped_column(String(64))
    # Initial passwords are issued by the office and changed by the company.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=True)

    company: Mapped[Company] = relationship(back_populates="users")


class Staff(Credentials, Base):
    """An office person: a designated handler or the manager."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "manager" | "handler"
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)

    companies: Mapped[list[Company]] = relationship(secondary=staff_companies)

    @property
    def is_manager(self) -> bool:
        return self.role == "manager"

    def may_serve(self, company_id: int) -> bool:
        """Managers serve every company; a handler only the assigned ones."""
        return self.is_manager or any(c.id == company_id for c in self.companies)


class ApiToken(Base):
    """A bearer token for one client user.  Only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("client_users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[ClientUser] = relationship()
