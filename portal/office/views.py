"""Inbox, one upload, pull into the vault, download with a purpose."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from flask import (
    Flask,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import ColumnElement, false, func, select
from sqlalchemy.orm import Session, joinedload

from .. import status as scanner_status
from ..audit import Actor, Tag, record
from ..auth import totp
from ..models import Company, DeletionRequest, Purpose, Staff, Status, Upload
from ..pipeline import open_vaulted
from ..services import Services
from ..web.base import remote_addr, services

PAGE = 50  # inbox rows per page
PULL_MAX = 1000  # uploads one bulk pull request may queue
JST = ZoneInfo("Asia/Tokyo")


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


def served_companies(db: Session, staff: Staff) -> list[Company]:
    """The companies this person may serve, by code (managers: all)."""
    if staff.is_manager:
        return list(db.execute(select(Company).order_by(Company.code)).scalars())
    return sorted(staff.companies, key=lambda c: c.code)


def page_arg(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() and len(raw) <= 6 and int(raw) > 0 else 1


def parse_day(raw: str | None) -> date | None:
    """A ``YYYY-MM-DD`` date, or None for anything else."""
    if not raw or len(raw) != 10:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def jst_midnight_utc(day: date) -> datetime:
    """The start of a JST day as the naive UTC datetime the database stores."""
    return datetime.combine(day, time(), JST).astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class InboxFilters:
    """The inbox filters; values outside the staff's companies are dropped."""

    company: Company | None = None
    status: str | None = None
    purpose: str | None = None
    received_from: date | None = None
    received_to: date | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str], served: Sequence[Company]) -> InboxFilters:
        code = args.get("company") or ""
        status = args.get("status") or None
        purpose = (args.get("purpose") or "")[:32] or None
        return cls(company=next((c for c in served if c.code == code), None),
                   status=status if status in {s.value for s in Status} else None,
                   purpose=purpose,
                   received_from=parse_day(args.get("from")),
                   received_to=parse_day(args.get("to")))

    def args(self) -> dict[str, Any]:
        """The query string that reproduces these filters."""
        out = {"company": self.company.code if self.company else "",
               "status": self.status or "", "purpose": self.purpose or "",
               "from": self.received_from.isoformat() if self.received_from else "",
               "to": self.received_to.isoformat() if self.received_to else ""}
        return {k: v for k, v in out.items() if v}


def inbox_conditions(staff: Staff, f: InboxFilters) -> list[ColumnElement[bool]]:
    """WHERE clauses of the inbox: always limited to the staff's companies."""
    conditions: list[ColumnElement[bool]] = []
    if f.company is not None:
        conditions.append(Upload.company_id == f.company.id)
    elif not staff.is_manager:
        ids = [c.id for c in staff.companies]
        conditions.append(Upload.company_id.in_(ids) if ids else false())
    if f.company is not None and not staff.may_serve(f.company.id):
        conditions.append(false())  # never reached: filters hold served companies only
    if f.status:
        conditions.append(Upload.status == f.status)
    if f.purpose:
        conditions.append(Upload.purpose_code == f.purpose)
    if f.received_from:
        conditions.append(Upload.created_at >= jst_midnight_utc(f.received_from))
    if f.received_to:
        # Inclusive: everything before the start of the next JST day.
        conditions.append(Upload.created_at
                          < jst_midnight_utc(f.received_to + timedelta(days=1)))
    return conditions


@dataclass
class InboxPage:
    items: list[Upload]
    number: int
    total: int
    pages: int
    open_requests: set[str] = field(default_factory=set)


def inbox_page(db: Session, staff: Staff, f: InboxFilters, number: int,
               size: int = PAGE) -> InboxPage:
    """One page, newest first: a COUNT query plus LIMIT/OFFSET, never every row."""
    conditions = inbox_conditions(staff, f)
    total = db.execute(select(func.count()).select_from(Upload)
                       .where(*conditions)).scalar_one()
    pages = max(1, math.ceil(total / size))
    number = min(number, pages)
    items = list(db.execute(
        select(Upload).where(*conditions)
        .options(joinedload(Upload.company), joinedload(Upload.purpose))
        .order_by(Upload.created_at.desc(), Upload.id.desc())
        .limit(size).offset((number - 1) * size)).scalars())
    return InboxPage(items, number, total, pages, open_deletion_requests(db, items))


def open_deletion_requests(db: Session, uploads: Sequence[Upload]) -> set[str]:
    """Ids of those uploads for which the client asked for deletion (still open)."""
    ids = [u.id for u in uploads]
    if not ids:
        return set()
    return set(db.execute(select(DeletionRequest.upload_id).where(
        DeletionRequest.upload_id.in_(ids), DeletionRequest.status == "open")).scalars())


def request_pulls(db: Session, svc: Services, staff: Staff, ids: Sequence[str]) -> list[str]:
    """Audit a pull request for each clean upload the staff may serve; return their ids.

    Anything else (unknown ids, other companies, not clean) is silently skipped.
    The caller commits, then queues the pulls.
    """
    if not ids:
        return []
    rows = db.execute(select(Upload.id, Upload.company_id).where(
        Upload.id.in_(list(ids)), Upload.status == Status.CLEAN)).all()
    by_id = {r.id: r.company_id for r in rows if staff.may_serve(r.company_id)}
    pulled = [i for i in ids if i in by_id]
    for upload_id in pulled:
        record(db, svc.audit_key, Tag.PULL_REQUESTED, actor(), company_id=by_id[upload_id],
               upload_id=upload_id, remote_addr=remote_addr(), details={"bulk": True})
    return pulled


def upload_page(upload_id: str, status: int = 200, form: Mapping[str, str] | None = None,
                ) -> Any:
    """The office page of one upload (also re-rendered by forms that failed)."""
    svc = services()
    with svc.sessions() as db:
        staff = me(db)
        upload = get_office_upload(db, staff, upload_id)
        _loaded = upload.company, upload.events, upload.purpose
        purposes = db.execute(select(Purpose).where(Purpose.active)
                              .order_by(Purpose.sort_order)).scalars().all()
        requests = list(db.execute(select(DeletionRequest).where(
            DeletionRequest.upload_id == upload.id, DeletionRequest.status == "open")
            .order_by(DeletionRequest.id)).scalars())
    return render_template("office/upload.html", upload=upload, purposes=purposes,
                           deletion_requests=requests, is_manager=staff.is_manager,
                           form=form or {}), status


def init(app: Flask) -> None:
    @app.route("/")
    def index() -> Any:
        svc = services()
        with svc.reader() as db:
            staff = me(db)
            served = served_companies(db, staff)
            filters = InboxFilters.from_args(request.args, served)
            page = inbox_page(db, staff, filters, page_arg(request.args.get("page")))
            purposes = db.execute(select(Purpose).order_by(Purpose.sort_order,
                                                           Purpose.code)).scalars().all()
        return render_template("office/inbox.html", page=page, uploads=page.items,
                               filters=filters, companies=served, purposes=purposes,
                               status=filters.status, statuses=[s.value for s in Status],
                               open_requests=page.open_requests,
                               scanner=scanner_status.load(svc))

    @app.route("/pull", methods=["POST"])
    def pull_many() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            staff = me(db)
            served = served_companies(db, staff)
            filters = InboxFilters.from_args(request.form, served)
            if request.form.get("all") == "1":
                conditions = [*inbox_conditions(staff, filters), Upload.status == Status.CLEAN]
                ids = list(db.execute(select(Upload.id).where(*conditions)
                                      .order_by(Upload.created_at).limit(PULL_MAX)).scalars())
            else:
                ids = [i for i in request.form.getlist("upload_ids") if 0 < len(i) <= 64]
                ids = list(dict.fromkeys(ids))[:PULL_MAX]
            pulled = request_pulls(db, svc, staff, ids)
        for upload_id in pulled:
            svc.enqueue.pull(upload_id, current_user.id)
        if pulled:
            flash(_("%(n)d files are being moved into the vault.", n=len(pulled)), "success")
        else:
            flash(_("No file was chosen that can be moved into the vault. Only files that "
                    "were scanned clean can be moved."), "error")
        return redirect(url_for("index", **filters.args()), 303)

    @app.route("/uploads/<upload_id>")
    def upload_detail(upload_id: str) -> Any:
        return upload_page(upload_id)

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
