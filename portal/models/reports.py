"""Closed months of the monthly usage report (利用記録レポート)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class MonthlyReport(Base):
    """One company's month, closed: the report exists and the client was told.

    The documents themselves are not stored: they are printed again from the
    database on each download (deterministically), so that no personal data
    is kept twice.  ``month`` is ``YYYY-MM`` in Japan time.
    """

    __tablename__ = "monthly_reports"
    __table_args__ = (UniqueConstraint("company_id", "month"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"))
    month: Mapped[str] = mapped_column(String(7))
    generated_at: Mapped[datetime] = mapped_column(default=utcnow)
    generated_by: Mapped[str] = mapped_column(String(200), default="")
    notified_at: Mapped[datetime | None] = mapped_column()
