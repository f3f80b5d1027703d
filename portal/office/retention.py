"""Retention (保管期限): change one file's date, list what is due, client deletion requests.

Every vaulted file keeps a ``retention_until`` date, set from its purpose when
it was vaulted (:func:`portal.pipeline.retention_until`).  A manager may move
it, with a reason; the change is audited with the old and new dates and the
reason text, unless the reason contains a 12-digit run (a possible My
Number), in which case only its length is recorded.  Dates are JST days.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

from flask import Flask, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from ..audit import Tag, record
from ..models import ClientUser, Company, DeletionRequest, Staff, Status, Upload
from ..pii import has_number_run
from ..web.base import remote_addr, services
from .admin import manager_required
from .views import (
    JST,
    PAGE,
    actor,
    get_office_upload,
    me,
    open_deletion_requests,
    page_arg,
    parse_day,
    served_companies,
    upload_page,
)

REASON_MAX = 500
EARLIEST, LATEST = date(2000, 1, 1), date(2200, 12, 31)



def today_jst() -> date:
    return datetime.now(JST).date()


def _scope(staff: Staff, column: Any) -> list[Any]:
    """The WHERE clause limiting a query to the staff's companies."""
    if staff.is_manager:
        return []
    return [column.in_([c.id for c in staff.companies])]


def _company_filter(served: list[Company]) -> Company | None:
    code = request.args.get("company") or ""
    return next((c for c in served if c.code == code), None)


def change_retention(db: Session, key: bytes, upload: Upload, new: date, reason: str) -> bool:
    """Set the date and audit it (inside the caller's transaction); False if unchanged."""
    old = upload.retention_until
    if old == new:
        return False
    details: dict[str, Any] = {"old": old.isoformat() if old else None,
                               "new": new.isoformat()}
    if has_number_run(reason):
        details["reason_length"] = len(reason)
    else:
        details["reason"] = reason
    upload.retention_until = new
    record(db, key, Tag.RETENTION_CHANGED, actor(), company_id=upload.company_id,
           upload_id=upload.id, remote_addr=remote_addr(), details=details)
    return True


def init(app: Flask) -> None:
    @app.route("/uploads/<upload_id>/retention", methods=["POST"])
    @manager_required
    def retention_change(upload_id: str) -> Any:
        svc = services()
        reason = request.form.get("reason", "").strip()
        new = parse_day(request.form.get("retention_until", "").strip())
        problem = None
        if new is None or not EARLIEST <= new <= LATEST:
            problem = _("Please enter the new date as year, month and day.")
        elif not reason:
            problem = _("Please give a reason for changing the retention date.")
        elif len(reason) > REASON_MAX:
            problem = _("Please keep the reason to %(n)d characters or fewer.", n=REASON_MAX)
        if problem is None:
            assert new is not None
            with svc.sessions() as db, db.begin():
                upload = get_office_upload(db, me(db), upload_id)
                if upload.status != Status.VAULTED:
                    problem = _("Only files in the vault have a retention date.")
                else:
                    changed = change_retention(db, svc.audit_key, upload, new, reason)
        if problem is not None:
            flash(problem, "error")
            return upload_page(upload_id, 400, request.form)
        flash(_("The retention date was changed.") if changed else _("Nothing was changed."),
              "success")
        return redirect(url_for("upload_detail", upload_id=upload_id), 303)

    @app.route("/retention/due")
    def retention_due() -> Any:
        svc = services()
        today = today_jst()
        with svc.sessions() as db:
            staff = me(db)
            served = served_companies(db, staff)
            company = _company_filter(served)
            conditions = [Upload.status == Status.VAULTED, Upload.retention_until < today,
                          *(([Upload.company_id == company.id]) if company
                            else _scope(staff, Upload.company_id))]
            total = db.execute(select(func.count()).select_from(Upload)
                               .where(*conditions)).scalar_one()
            pages = max(1, math.ceil(total / PAGE))
            number = min(page_arg(request.args.get("page")), pages)
            rows = list(db.execute(
                select(Upload).where(*conditions)
                .options(joinedload(Upload.company), joinedload(Upload.purpose))
                .order_by(Upload.company_id, Upload.retention_until, Upload.id)
                .limit(PAGE).offset((number - 1) * PAGE)).scalars())
            requested = open_deletion_requests(db, rows)
        return render_template("office/retention.html", view="due", uploads=rows,
                               requested=requested, companies=served, company=company,
                               total=total, number=number, pages=pages, today=today)

    @app.route("/deletion-requests")
    def deletion_requests() -> Any:
        svc = services()
        show_all = request.args.get("status") == "all"
        with svc.sessions() as db:
            staff = me(db)
            served = served_companies(db, staff)
            company = _company_filter(served)
            conditions = ([DeletionRequest.company_id == company.id] if company
                          else _scope(staff, DeletionRequest.company_id))
            if not show_all:
                conditions.append(DeletionRequest.status == "open")
            total = db.execute(select(func.count()).select_from(DeletionRequest)
                               .where(*conditions)).scalar_one()
            pages = max(1, math.ceil(total / PAGE))
            number = min(page_arg(request.args.get("page")), pages)
            rows = list(db.execute(
                select(DeletionRequest, Upload, ClientUser.login)
                .join(Upload, Upload.id == DeletionRequest.upload_id)
                .join(ClientUser, ClientUser.id == DeletionRequest.requested_by_id)
                .where(*conditions).options(joinedload(Upload.company))
                .order_by(DeletionRequest.created_at.desc(), DeletionRequest.id.desc())
                .limit(PAGE).offset((number - 1) * PAGE)).tuples())
            # Defence in depth: never show a row outside the staff's companies.
            rows = [(r, u, who) for r, u, who in rows if staff.may_serve(r.company_id)]
        return render_template("office/retention.html", view="requests", requests=rows,
                               companies=served, company=company, show_all=show_all,
                               total=total, number=number, pages=pages)
