"""The company room: list, upload form, one upload's history."""

from __future__ import annotations

from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select

from .. import opening
from ..custody import chain_of_custody, render, scan_verdict
from ..intake import IntakeError, active_purpose, register, reject
from ..messages import reason_text
from ..models import ClientUser, Company, Purpose, Upload
from ..receipt import receipt_pdf
from ..services import Services
from ..web.base import remote_addr, services
from . import deletion


def get_room_upload(svc: Services, upload_id: str) -> Upload:
    """The one ownership check: another company's upload is 404, not 403."""
    with svc.reader() as db:
        upload = db.get(Upload, upload_id) if len(upload_id) <= 64 else None
        if upload is None or upload.company_id != current_user.company_id:
            abort(404)
        _ = upload.events, upload.purpose  # load for the template
        return upload


def current_client(svc: Services) -> ClientUser:
    with svc.reader() as db:
        user = db.get(ClientUser, current_user.id)
        assert user is not None
        return user


def user_language(account: ClientUser) -> str:
    """The account's saved language ("ja" unless it chose "en")."""
    return "en" if account.language == "en" else "ja"


def purposes(svc: Services) -> list[Purpose]:
    with svc.reader() as db:
        return list(db.execute(select(Purpose).where(Purpose.active)
                               .order_by(Purpose.sort_order)).scalars())


def receipt_response(upload_id: str) -> Response:
    """The receipt (受領書) of one of the caller's uploads, as a PDF attachment.

    Shared by the room page and the API; ``get_room_upload`` makes another
    company's id a 404.  In the signed-in user's language (their saved
    preference, also for the API) unless ``?lang=ja|en`` asks.
    """
    svc = services()
    upload = get_room_upload(svc, upload_id)
    asked = request.args.get("lang")
    lang = asked if asked in ("ja", "en") else user_language(current_client(svc))
    with svc.reader() as db:
        company = db.get(Company, upload.company_id)
        assert company is not None
        steps = chain_of_custody(db, upload, lang)
    pdf = receipt_pdf(upload, company, steps, lang,
                      purpose_label=upload.purpose.label(lang))
    resp = Response(pdf, mimetype="application/pdf")
    # RFC 6266: the id is generated hex; keep only safe characters anyway.
    safe_id = "".join(c for c in upload.id if c.isascii() and (c.isalnum() or c in "-_"))
    resp.headers["Content-Disposition"] = f'attachment; filename="receipt-{safe_id}.pdf"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init(app: Flask) -> None:
    @app.route("/")
    def index() -> Any:
        svc = services()
        with svc.reader() as db:
            uploads = db.execute(
                select(Upload).where(Upload.company_id == current_user.company_id)
                .order_by(Upload.created_at.desc()).limit(200)
            ).scalars().all()
            for u in uploads:
                _ = u.purpose
        return render_template("client/room.html", uploads=uploads, purposes=purposes(svc),
                               max_bytes=svc.settings.max_upload_bytes)

    @app.route("/uploads", methods=["POST"])
    def upload_form() -> Any:
        svc = services()
        user = current_client(svc)
        # Accessing the form runs the streaming parser: the file part has
        # already been encrypted into an uncommitted drop-zone object.
        file = request.files.get("file")
        sinks = g.get("kinko_sinks", [])
        try:
            if file is None or not sinks or not file.filename:
                raise IntakeError("no_file")
            purpose_code = request.form.get("purpose", "")
            active_purpose(svc, purpose_code)
            received = sinks[0].finish()
            upload = register(svc, received, user=user, filename=file.filename,
                              purpose_code=purpose_code, remote_addr=remote_addr())
        except IntakeError as exc:
            for sink in sinks:
                sink.abort()
            if exc.code != "empty":
                reject(svc, user, exc.code, remote_addr())
            flash(reason_text(exc.code), "error")
            return redirect(url_for("index")), 303
        flash(_("Received. The file is being checked for viruses."), "success")
        return redirect(url_for("upload_detail", upload_id=upload.id), 303)

    @app.route("/uploads/<upload_id>")
    def upload_detail(upload_id: str) -> Any:
        svc = services()
        upload = get_room_upload(svc, upload_id)
        with svc.sessions() as db:
            request_state = deletion.latest_request(db, upload.id)
            custody = render(chain_of_custody(db, upload, str(get_locale())), _)
            openable = opening.can_open(db, upload)
            # An opening that stopped half-way: what is out already stays out.
            files_out = len(opening.opened_so_far(db, upload.id)) if openable else 0
        verdict, verdict_args = scan_verdict(upload)
        return render_template("client/upload.html", upload=upload,
                               deletion_request=request_state,
                               reason_max=deletion.REASON_MAX, custody=custody,
                               verdict=_(verdict, **verdict_args), openable=openable,
                               files_out=files_out,
                               attempts_left=opening.attempts_left(upload))

    @app.route("/uploads/<upload_id>/receipt.pdf")
    def upload_receipt(upload_id: str) -> Any:
        return receipt_response(upload_id)

    deletion.init(app)
