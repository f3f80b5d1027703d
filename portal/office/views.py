"""Inbox, one upload, pull into the vault, download with a purpose."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Flask, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select

from .. import status as scanner_status
from ..audit import Actor, Tag, record
from ..auth import totp
from ..models import Company, Purpose, Staff, Status, Upload
from ..pipeline import open_vaulted
from ..services import Services
from ..web.base import remote_addr, services

PAGE = 100


def me(db: Any) -> Staff:
    staff = db.get(Staff, current_user.id)
    assert staff is not None
    return staff


def get_office_upload(db: Any, staff: Staff, upload_id: str) -> Upload:
    """The one access check: unknown, or outside the handler's companies → 404."""
    upload = db.get(Upload, upload_id) if len(upload_id) <= 64 else None
    if upload is None or not staff.may_serve(upload.company_id):
        abort(404)
    return upload


def actor() -> Actor:
    return Actor("staff", current_user.id, current_user.login)


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the UTF-8 name, both safely quoted."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def init(app: Flask) -> None:
    @app.route("/")
    def index() -> Any:
        svc = services()
        status = request.args.get("status") or None
        with svc.sessions() as db:
            staff = me(db)
            query = select(Upload).order_by(Upload.created_at.desc()).limit(PAGE)
            if not staff.is_manager:
                query = query.where(Upload.company_id.in_([c.id for c in staff.companies]))
            if status in {s.value for s in Status}:
                query = query.where(Upload.status == status)
            uploads = db.execute(query).scalars().all()
            for u in uploads:
                _ = u.company, u.purpose
        return render_template("office/inbox.html", uploads=uploads, status=status,
                               statuses=[s.value for s in Status],
                               scanner=scanner_status.load(svc))

    @app.route("/uploads/<upload_id>")
    def upload_detail(upload_id: str) -> Any:
        svc = services()
        with svc.sessions() as db:
            upload = get_office_upload(db, me(db), upload_id)
            _ = upload.company, upload.events, upload.purpose
            purposes = db.execute(select(Purpose).where(Purpose.active)
                                  .order_by(Purpose.sort_order)).scalars().all()
        return render_template("office/upload.html", upload=upload, purposes=purposes)

    @app.route("/uploads/<upload_id>/pull", methods=["POST"])
    def pull(upload_id: str) -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            upload = get_office_upload(db, me(db), upload_id)
            if upload.status != Status.CLEAN:
                flash(_("Only files that were scanned clean can be moved into the vault."),
                      "error")
                return redirect(url_for("upload_detail", upload_id=upload_id), 303)
            record(db, svc.audit_key, Tag.PULL_REQUESTED, actor(),
                   company_id=upload.company_id, upload_id=upload_id, remote_addr=remote_addr())
        svc.enqueue.pull(upload_id, current_user.id)
        flash(_("The file is being moved into the vault."), "success")
        return redirect(url_for("upload_detail", upload_id=upload_id), 303)

    @app.route("/uploads/<upload_id>/download", methods=["POST"])
    def download(upload_id: str) -> Any:
        svc = services()
        purpose_code = request.form.get("purpose", "")
        with svc.sessions() as db, db.begin():
            staff = me(db)
            upload = get_office_upload(db, staff, upload_id)
            purpose = db.get(Purpose, purpose_code) if purpose_code else None
            problem = None
            if purpose is None or not purpose.active:
                problem = "no_purpose"
            elif not (staff.totp_secret and totp.consume(db, Staff, staff.id, staff.totp_secret,
                                                         request.form.get("code", ""))):
                problem = "totp"
            elif upload.status != Status.VAULTED:
                problem = "not_vaulted"
            if problem:
                record(db, svc.audit_key, Tag.FILE_DOWNLOAD_REFUSED, actor(),
                       company_id=upload.company_id, upload_id=upload_id,
                       remote_addr=remote_addr(), details={"why": problem})
            else:
                # Recorded before the first byte leaves: every access is logged.
                record(db, svc.audit_key, Tag.FILE_DOWNLOADED, actor(),
                       company_id=upload.company_id, upload_id=upload_id,
                       remote_addr=remote_addr(), details={"purpose": purpose_code})
        if problem:
            flash({"no_purpose": _("Please choose the purpose of use."),
                   "totp": _("Please enter a current code from your authenticator app."),
                   "not_vaulted": _("The file is not in the vault.")}[problem], "error")
            return redirect(url_for("upload_detail", upload_id=upload_id), 303)
        return _stream(svc, upload)

    @app.route("/companies")
    def companies() -> Any:
        svc = services()
        with svc.sessions() as db:
            staff = me(db)
            rows = db.execute(select(Company).order_by(Company.code)).scalars().all()
            rows = [c for c in rows if staff.may_serve(c.id)]
        return render_template("office/companies.html", companies=rows)


def _stream(svc: Services, upload: Upload) -> Response:
    reader = open_vaulted(svc, upload)

    def body() -> Any:
        # A damaged object raises mid-stream: the connection is cut rather
        # than completed with wrong bytes (the file size will not match).
        try:
            yield from reader.iter_chunks(1 << 20)
        finally:
            reader.close()

    resp = Response(body(), mimetype="application/octet-stream")
    resp.headers["Content-Disposition"] = content_disposition(upload.filename)
    resp.headers["Content-Length"] = str(upload.size)
    return resp
