"""The handling ledger and the monthly usage reports in the staff console.

Managers see every company, a handler only the assigned ones: a company the
person does not serve answers 404.  Every document printed here, and every
month closed, is recorded as ``office:report:generated``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import reports
from ..audit import Tag, record
from ..certificate import JST
from ..models import Company, Staff
from ..web.base import remote_addr, services
from .views import actor, me, served_companies

FORMATS = {"pdf": "application/pdf", "csv": "text/csv; charset=utf-8"}


def served_company(db: Session, staff: Staff, code: str) -> Company:
    """The one access check of this module: unknown or not served → 404."""
    company = db.execute(select(Company).where(Company.code == code[:32])
                         ).scalar_one_or_none()
    if company is None or not staff.may_serve(company.id):
        abort(404)
    return company


def attachment(body: bytes, fmt: str, name: str) -> Response:
    resp = Response(body, mimetype=FORMATS[fmt])
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    resp.headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init(app: Flask) -> None:
    @app.route("/reports")
    def reports_index() -> Any:
        with services().sessions() as db:
            companies = served_companies(db, me(db))
        return render_template("office/reports/index.html", companies=companies)

    @app.route("/companies/<code>/reports")
    def company_reports(code: str) -> Any:
        with services().sessions() as db:
            company = served_company(db, me(db), code)
            closed = reports.closed_months(db, company.id)
        return render_template("office/reports/company.html", company=company,
                               closed=closed, suggested=reports.previous_month(),
                               latest=reports.current_month())

    @app.route("/companies/<code>/reports/close", methods=["POST"])
    def report_close(code: str) -> Any:
        svc = services()
        month = request.form.get("month", "").strip()
        with svc.sessions() as db:
            company = served_company(db, me(db), code)
        try:
            done = reports.close_month(svc, company, month, actor(), remote_addr=remote_addr())
        except reports.ReportError as exc:
            flash(_("Please choose a month that has already begun.")
                  if exc.code == "future_month" else _("Please enter the month as YYYY-MM."),
                  "error")
            return redirect(url_for("company_reports", code=code), 303)
        label = reports.month_label(month, str(get_locale()))
        if done.created:
            flash(_("The usage report for %(month)s was generated. Client users who have "
                    "an e-mail address were notified: %(count)d.", month=label,
                    count=done.sent), "success")
        else:
            flash(_("The usage report for %(month)s had already been generated.",
                    month=label), "success")
        return redirect(url_for("company_reports", code=code), 303)

    @app.route("/companies/<code>/reports/<month>.<fmt>")
    def report_download(code: str, month: str, fmt: str) -> Any:
        svc = services()
        if fmt not in FORMATS:
            abort(404)
        if not reports.is_month(month) or month > reports.current_month():
            abort(404)
        with svc.sessions() as db, db.begin():
            company = served_company(db, me(db), code)
            lang = "en" if me(db).language == "en" else "ja"  # the staff member's
            body = (reports.monthly_pdf(db, company, month, lang=lang) if fmt == "pdf"
                    else reports.monthly_csv(db, company, month, lang=lang))
            record(db, svc.audit_key, Tag.REPORT_GENERATED, actor(), company_id=company.id,
                   remote_addr=remote_addr(),
                   details={"report": "monthly", "month": month, "format": fmt})
        return attachment(body, fmt, f"usage-report-{company.code}-{month}.{fmt}")

    @app.route("/companies/<code>/ledger.<fmt>")
    def ledger_download(code: str, fmt: str) -> Any:
        svc = services()
        if fmt not in FORMATS:
            abort(404)
        with svc.sessions() as db, db.begin():
            company = served_company(db, me(db), code)
            lang = "en" if me(db).language == "en" else "ja"  # the staff member's
            body = (reports.ledger_pdf(db, company, svc.settings, lang=lang) if fmt == "pdf"
                    else reports.ledger_csv(db, company, svc.settings, lang=lang))
            record(db, svc.audit_key, Tag.REPORT_GENERATED, actor(), company_id=company.id,
                   remote_addr=remote_addr(), details={"report": "ledger", "format": fmt})
        day = datetime.now(UTC).astimezone(JST).date().isoformat()
        return attachment(body, fmt, f"ledger-{company.code}-{day}.{fmt}")


__all__ = ["init"]
