"""The office's purposes of use (利用目的), edited by the manager.

A purpose names why a file is received and used (雇用保険届出, 源泉徴収票作成 …)
and how many years a file kept for it is retained by default.  Purposes are
never deleted (uploads and audit events refer to their codes); the manager
deactivates one instead.  Every change is audited with the old and new values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import Tag, record
from ..models import Purpose
from ..web.base import remote_addr, services
from .admin import manager_required
from .retention import has_number_run
from .views import actor

CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
FIELDS = ("label_ja", "label_en", "retention_years", "sort_order", "active")
ERRORS = {
    "bad_code": _l("The code may use only lower-case letters, digits, “-” and “_” "
                   "(up to 32 characters)."),
    "bad_label": _l("Please enter both labels (up to 100 characters each, without "
                    "personal numbers)."),
    "bad_years": _l("The retention period must be a whole number of years from 0 to 100."),
    "bad_order": _l("The order must be a whole number from 0 to 9999."),
    "duplicate": _l("This code is already in use."),
}


class PurposeError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class PurposeForm:
    label_ja: str
    label_en: str
    retention_years: int
    sort_order: int
    active: bool

    @classmethod
    def parse(cls, form: Any) -> PurposeForm:
        labels = [form.get(n, "").strip() for n in ("label_ja", "label_en")]
        if any(not v or len(v) > 100 or has_number_run(v) for v in labels):
            raise PurposeError("bad_label")
        return cls(labels[0], labels[1], _number(form, "retention_years", 100, "bad_years"),
                   _number(form, "sort_order", 9999, "bad_order"),
                   form.get("active") in ("1", "on", "true", "yes"))

    def values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELDS}


def _number(form: Any, name: str, top: int, error: str) -> int:
    raw = form.get(name, "").strip()
    if not raw.isdigit() or len(raw) > 4 or int(raw) > top:
        raise PurposeError(error)
    return int(raw)


def create_purpose(db: Session, key: bytes, code: str, data: PurposeForm) -> Purpose:
    if not CODE.fullmatch(code):
        raise PurposeError("bad_code")
    if db.get(Purpose, code) is not None:
        raise PurposeError("duplicate")
    purpose = Purpose(code=code, **data.values())
    db.add(purpose)
    db.flush()
    record(db, key, Tag.PURPOSE_CREATED, actor(), remote_addr=remote_addr(),
           details={"code": code, **data.values()})
    return purpose


def update_purpose(db: Session, key: bytes, purpose: Purpose, data: PurposeForm) -> bool:
    """Apply the changes and audit them as ``{field: [old, new]}``; False if none."""
    changes = {f: [getattr(purpose, f), v] for f, v in data.values().items()
               if getattr(purpose, f) != v}
    if not changes:
        return False
    for name, (_old, new) in changes.items():
        setattr(purpose, name, new)
    record(db, key, Tag.PURPOSE_UPDATED, actor(), remote_addr=remote_addr(),
           details={"code": purpose.code, "changes": changes})
    return True


def _all(db: Session) -> list[Purpose]:
    return list(db.execute(select(Purpose).order_by(Purpose.sort_order, Purpose.code))
                .scalars())


def init(app: Flask) -> None:
    @app.route("/admin/purposes", methods=["GET", "POST"])
    @manager_required
    def purposes() -> Any:
        svc = services()
        status = 200
        if request.method == "POST":
            code = request.form.get("code", "").strip()[:64]
            try:
                with svc.sessions() as db, db.begin():
                    create_purpose(db, svc.audit_key, code, PurposeForm.parse(request.form))
                flash(_("The purpose was added."), "success")
                return redirect(url_for("purposes"), 303)
            except PurposeError as exc:
                flash(str(ERRORS[exc.code]), "error")
                status = 400
        with svc.sessions() as db:
            rows = _all(db)
        return render_template("office/purposes.html", purposes=rows, purpose=None,
                               form=request.form if status != 200 else {}), status

    @app.route("/admin/purposes/<code>", methods=["GET", "POST"])
    @manager_required
    def purpose_edit(code: str) -> Any:
        svc = services()
        status = 200
        if request.method == "POST":
            try:
                with svc.sessions() as db, db.begin():
                    purpose = db.get(Purpose, code) if len(code) <= 32 else None
                    if purpose is None:
                        abort(404)
                    changed = update_purpose(db, svc.audit_key, purpose,
                                             PurposeForm.parse(request.form))
                flash(_("The purpose was saved.") if changed else _("Nothing was changed."),
                      "success")
                return redirect(url_for("purposes"), 303)
            except PurposeError as exc:
                flash(str(ERRORS[exc.code]), "error")
                status = 400
        with svc.sessions() as db:
            purpose = db.get(Purpose, code) if len(code) <= 32 else None
            if purpose is None:
                abort(404)
            rows = _all(db)
        return render_template("office/purposes.html", purposes=rows, purpose=purpose,
                               form=request.form if status != 200 else {}), status
