"""Disposal in the staff console: propose, approve (manager, fresh TOTP), certificate.

Every view goes through :func:`portal.office.views.get_office_upload` (or the
same ``may_serve`` check for records): a company the person does not serve
answers 404.  The rules themselves live in :mod:`portal.disposal`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from .. import disposal
from ..audit import Tag, record
from ..auth import totp
from ..certificate import certificate_pdf
from ..models import Company, DisposalRecord, Purpose, Staff, Status, Upload
from ..web.base import remote_addr, services
from .views import actor, get_office_upload, me

RECENT = 100

MESSAGES = {
    "not_found": _l("Not found."),
    "not_vaulted": _l("The file is not in the vault."),
    "already_proposed": _l("Disposal of this file has already been proposed."),
    "no_reason": _l("Please enter the reason for disposal."),
    "reason_too_long": _l("The reason is too long (at most 1,000 characters)."),
    "reason_has_number": _l("The reason must not contain a personal number."),
    "not_proposed": _l("Disposal of this file has not been proposed yet."),
    "same_person": _l("The person who proposed the disposal cannot approve it. Another "
                      "manager must approve."),
    "not_manager": _l("Only a manager can approve disposal."),
    "not_allowed": _l("Only the person who proposed it or a manager can withdraw the "
                      "proposal."),
    "totp": _l("Please enter a current code from your authenticator app."),
}


def _back(upload_id: str) -> Any:
    return redirect(url_for("upload_detail", upload_id=upload_id), 303)


def _panel_state(upload: Upload) -> dict[str, Any]:
    """What the upload page's disposal panel needs: proposer's name, record number."""
    svc = services()
    state: dict[str, Any] = {"proposer": None, "record_id": None}
    with svc.sessions() as db:
        if upload.disposal_proposed_by_id is not None:
            proposer = db.get(Staff, upload.disposal_proposed_by_id)
            state["proposer"] = disposal.staff_label(proposer) if proposer else None
        if upload.status == Status.DISPOSED:
            state["record_id"] = db.execute(select(DisposalRecord.id).where(
                DisposalRecord.upload_id == upload.id)).scalar_one_or_none()
    return state


def init(app: Flask) -> None:
    @app.context_processor
    def inject() -> dict[str, Any]:
        return {"disposal_state": _panel_state}

    @app.route("/disposal")
    def disposal_list() -> Any:
        svc = services()
        with svc.sessions() as db:
            staff = me(db)
            proposed = db.execute(
                select(Upload).where(Upload.status == Status.VAULTED,
                                     Upload.disposal_proposed_by_id.is_not(None))
                .order_by(Upload.disposal_proposed_at)).scalars().all()
            proposed = [u for u in proposed if staff.may_serve(u.company_id)]
            for u in proposed:
                _u = u.company, u.purpose
            proposers = {s.id: disposal.staff_label(s) for s in db.execute(
                select(Staff).where(Staff.id.in_(
                    {u.disposal_proposed_by_id for u in proposed}))).scalars()}
            records = db.execute(select(DisposalRecord)
                                 .order_by(DisposalRecord.approved_at.desc())
                                 .limit(RECENT)).scalars().all()
            records = [r for r in records if staff.may_serve(r.company_id)]
            companies = {c.id: c for c in db.execute(select(Company)).scalars()}
        return render_template("office/disposal/list.html", proposed=proposed,
                               proposers=proposers, records=records, companies=companies)

    @app.route("/uploads/<upload_id>/disposal/propose", methods=["POST"])
    def disposal_propose(upload_id: str) -> Any:
        svc = services()
        try:
            with svc.sessions() as db, db.begin():
                staff = me(db)
                upload = get_office_upload(db, staff, upload_id)
                disposal.propose(db, svc, staff, upload, request.form.get("reason", ""),
                                 remote_addr=remote_addr(), actor=actor())
        except disposal.DisposalError as exc:
            flash(str(MESSAGES.get(exc.code, exc.code)), "error")
            return _back(upload_id)
        flash(_("Disposal was proposed. A manager other than you must approve it."),
              "success")
        return _back(upload_id)

    @app.route("/uploads/<upload_id>/disposal/withdraw", methods=["POST"])
    def disposal_withdraw(upload_id: str) -> Any:
        svc = services()
        try:
            with svc.sessions() as db, db.begin():
                staff = me(db)
                upload = get_office_upload(db, staff, upload_id)
                disposal.withdraw(db, svc, staff, upload, remote_addr=remote_addr(),
                                  actor=actor())
        except disposal.DisposalError as exc:
            flash(str(MESSAGES.get(exc.code, exc.code)), "error")
            return _back(upload_id)
        flash(_("The disposal proposal was withdrawn."), "success")
        return _back(upload_id)

    @app.route("/uploads/<upload_id>/disposal/approve", methods=["POST"])
    def disposal_approve(upload_id: str) -> Any:
        svc = services()
        # Step-up first, in its own transaction: a refused code is recorded
        # even though nothing else happens.
        with svc.sessions() as db, db.begin():
            staff = me(db)
            upload = get_office_upload(db, staff, upload_id)
            fresh = bool(staff.totp_secret) and totp.consume(
                db, Staff, staff.id, staff.totp_secret or "", request.form.get("code", ""))
            if not fresh:
                disposal.refuse(db, svc, actor(), upload, "totp", remote_addr=remote_addr())
        if not fresh:
            flash(str(MESSAGES["totp"]), "error")
            return _back(upload_id)
        try:
            done = disposal.approve(svc, upload_id, staff, remote_addr=remote_addr(),
                                    actor=actor())
        except disposal.DisposalError as exc:
            if exc.code == "not_found":
                abort(404)
            flash(str(MESSAGES.get(exc.code, exc.code)), "error")
            return _back(upload_id)
        flash(_("The file was disposed of: its stored data was deleted and its encryption "
                "key destroyed. Certificate No. %(number)s can be downloaded.",
                number=done.id), "success")
        return _back(upload_id)

    @app.route("/disposal/<int:record_id>/certificate.pdf")
    def disposal_certificate(record_id: int) -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            staff = me(db)
            rec = db.get(DisposalRecord, record_id)
            if rec is None or not staff.may_serve(rec.company_id):
                abort(404)
            company = db.get(Company, rec.company_id)
            assert company is not None
            purpose = db.get(Purpose, rec.purpose_code)
            record(db, svc.audit_key, Tag.CERTIFICATE_ISSUED, actor(),
                   company_id=rec.company_id, upload_id=rec.upload_id,
                   remote_addr=remote_addr(), details={"record_id": rec.id})
            lang = "en" if staff.language == "en" else "ja"  # the staff member's
            pdf = certificate_pdf(rec, company, lang,
                                  purpose_label=purpose.label(lang) if purpose else None)
        resp = Response(pdf, mimetype="application/pdf")
        resp.headers["Content-Disposition"] = (
            f'attachment; filename="disposal-certificate-{rec.id}.pdf"')
        return resp


__all__ = ["init"]
