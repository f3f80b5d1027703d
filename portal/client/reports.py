"""The company's monthly usage reports in its room: closed months only.

A month appears once the office (or the worker, after the month ends) has
closed it.  The documents are printed from the database on each download;
any other month, and any other company, answers 404.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, abort, render_template
from flask_login import current_user

from ..audit import Actor, Tag, record
from ..models import ClientUser, Company
from ..web.base import remote_addr, services

FORMATS = {"pdf": "application/pdf", "csv": "text/csv; charset=utf-8"}


def init(app: Flask) -> None:
    @app.route("/reports")
    def reports_list() -> Any:
        from .. import reports  # here: loaded when a report is asked for (web memory)

        with services().sessions() as db:
            closed = reports.closed_months(db, current_user.company_id)
        return render_template("client/reports.html", closed=closed)

    @app.route("/reports/<month>.<fmt>")
    def report_file(month: str, fmt: str) -> Any:
        from .. import reports

        svc = services()
        if fmt not in FORMATS:
            abort(404)
        if not reports.is_month(month):
            abort(404)
        with svc.sessions() as db, db.begin():
            # The one ownership check: the signed-in user's own company, closed months.
            company = db.get(Company, current_user.company_id)
            if company is None or reports.find_closed(db, company.id, month) is None:
                abort(404)
            account = db.get(ClientUser, current_user.id)
            lang = "en" if account is not None and account.language == "en" else "ja"
            body = (reports.monthly_pdf(db, company, month, lang=lang) if fmt == "pdf"
                    else reports.monthly_csv(db, company, month, lang=lang))
            record(db, svc.audit_key, Tag.REPORT_GENERATED,
                   Actor("client", current_user.id, current_user.login),
                   company_id=company.id, remote_addr=remote_addr(),
                   details={"report": "monthly", "month": month, "format": fmt,
                            "via": "room"})
        resp = Response(body, mimetype=FORMATS[fmt])
        resp.headers["Content-Disposition"] = (
            f'attachment; filename="usage-report-{month}.{fmt}"')
        resp.headers["Cache-Control"] = "no-store"
        return resp


__all__ = ["init"]
