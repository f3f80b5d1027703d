"""A client asks the office to delete one of its files (e.g. an employee left).

The request is only a request: the office decides and disposes of the file
(with a manager's approval).  While it is open the client may withdraw it.
The optional reason is free text shown to the office; it is refused if it
holds 12 digits in a row (a possible My Number), and the audit log records
only its length.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, flash, redirect, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import Actor, Tag, record
from ..models import DeletionRequest, Status, Upload, utcnow
from ..pii import has_number_run
from ..web.base import remote_addr, services

REASON_MAX = 500


class DeletionError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code



def latest_request(db: Session, upload_id: str) -> DeletionRequest | None:
    """The most recent request for this upload, whatever its state."""
    return db.execute(select(DeletionRequest).where(DeletionRequest.upload_id == upload_id)
                      .order_by(DeletionRequest.id.desc()).limit(1)).scalar_one_or_none()


def open_request(db: Session, upload_id: str) -> DeletionRequest | None:
    return db.execute(select(DeletionRequest).where(
        DeletionRequest.upload_id == upload_id, DeletionRequest.status == "open")
        .order_by(DeletionRequest.id.desc()).limit(1)).scalar_one_or_none()


def _actor() -> Actor:
    return Actor("client", current_user.id, current_user.login)


def _room_upload(db: Session, upload_id: str) -> Upload:
    """The room's ownership check: another company's upload is 404."""
    upload = db.get(Upload, upload_id) if len(upload_id) <= 64 else None
    if upload is None or upload.company_id != current_user.company_id:
        abort(404)
    return upload


def request_deletion(db: Session, key: bytes, upload: Upload, reason: str) -> DeletionRequest:
    if len(reason) > REASON_MAX:
        raise DeletionError("too_long")
    if has_number_run(reason):
        raise DeletionError("number")
    if upload.status != Status.VAULTED:
        raise DeletionError("not_vaulted")
    if open_request(db, upload.id) is not None:
        raise DeletionError("already")
    req = DeletionRequest(upload_id=upload.id, company_id=upload.company_id,
                          requested_by_id=current_user.id, reason=reason, status="open")
    db.add(req)
    db.flush()
    record(db, key, Tag.DELETION_REQUESTED, _actor(), company_id=upload.company_id,
           upload_id=upload.id, remote_addr=remote_addr(),
           details={"request_id": req.id, "reason_length": len(reason)})
    return req


def withdraw(db: Session, key: bytes, upload: Upload) -> bool:
    req = open_request(db, upload.id)
    if req is None:
        return False
    req.status = "withdrawn"
    req.closed_at = utcnow()
    record(db, key, Tag.DELETION_WITHDRAWN, _actor(), company_id=upload.company_id,
           upload_id=upload.id, remote_addr=remote_addr(), details={"request_id": req.id})
    return True


def error_text(code: str) -> str:
    return {
        "too_long": _("Please keep the reason to %(n)d characters or fewer.", n=REASON_MAX),
        "number": _("For your protection, please do not write a personal number (12 digits) "
                    "in the reason. A name or an employee number is enough for the "
                    "office."),
        "not_vaulted": _("Only files that are in the office's vault can be deleted on "
                         "request."),
        "already": _("You have already asked for this file to be deleted."),
    }[code]


def init(app: Flask) -> None:
    @app.route("/uploads/<upload_id>/deletion-request", methods=["POST"])
    def deletion_request(upload_id: str) -> Any:
        svc = services()
        reason = request.form.get("reason", "").strip()
        try:
            with svc.sessions() as db, db.begin():
                request_deletion(db, svc.audit_key, _room_upload(db, upload_id), reason)
        except DeletionError as exc:
            flash(error_text(exc.code), "error")
            return redirect(url_for("upload_detail", upload_id=upload_id), 303)
        flash(_("Your request was sent to the office. You can follow it on this page."),
              "success")
        return redirect(url_for("upload_detail", upload_id=upload_id), 303)

    @app.route("/uploads/<upload_id>/deletion-request/withdraw", methods=["POST"])
    def deletion_withdraw(upload_id: str) -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            done = withdraw(db, svc.audit_key, _room_upload(db, upload_id))
        flash(_("Your deletion request was withdrawn.") if done
              else _("There is no open deletion request for this file."),
              "success" if done else "error")
        return redirect(url_for("upload_detail", upload_id=upload_id), 303)
