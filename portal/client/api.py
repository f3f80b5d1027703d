"""The client HTTP API of ../shared/contract.md (``/api/v1``).

Bearer tokens need no CSRF token (no ambient credential); a browser using
its session cookie must send the CSRF header.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from flask import Blueprint, Flask, jsonify, request
from flask_babel import get_locale
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import select

from ..intake import IntakeError, UploadTooLargeError, receive_stream, reject
from ..messages import reason_text
from ..models import Upload
from ..web.base import remote_addr, services
from .views import current_client, get_room_upload, purposes, receipt_response


def iso(at: datetime | None) -> str | None:
    """ISO 8601 in UTC.  SQLite returns naive datetimes; they are UTC."""
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def upload_json(u: Upload, *, events: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": u.id, "filename": u.filename, "status": u.status, "size": u.size,
        "sha256": u.sha256, "purpose": u.purpose_code, "kind": u.kind,
        "reason_code": u.reason, "reason": reason_text(u.reason) if u.reason else None,
        "created_at": iso(u.created_at),
    }
    report = u.mynumber_report() if u.kind in ("csv", "xlsx", "ods") else None
    if report is not None:
        # Check-digit report: counts and cell positions only, never digits.
        out["mynumber"] = report
    if events:
        out["events"] = [{"status": e.status, "at": iso(e.at)} for e in u.events]
    return out


def filename_from_disposition(header: str | None) -> str | None:
    """RFC 6266 / 5987: prefer ``filename*=UTF-8''…`` over ``filename="…"``."""
    if not header:
        return None
    plain = None
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        key = key.strip().lower()
        value = value.strip()
        if key == "filename*":
            charset, _, rest = value.partition("''")
            if charset.lower() != "utf-8":
                return None
            try:
                return unquote(rest, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                return None
        if key == "filename":
            plain = value.strip('"')
    return plain


def list_purposes() -> Any:
    lang = str(get_locale())
    return jsonify(purposes=[{"code": p.code, "label": p.label(lang)}
                             for p in purposes(services())])


def list_uploads() -> Any:
    svc = services()
    with svc.reader() as db:
        rows = db.execute(select(Upload).where(Upload.company_id == current_user.company_id)
                          .order_by(Upload.created_at.desc()).limit(500)).scalars().all()
    return jsonify(uploads=[upload_json(u) for u in rows])


def get_upload(upload_id: str) -> Any:
    return jsonify(upload_json(get_room_upload(services(), upload_id), events=True))


def get_receipt(upload_id: str) -> Any:
    """The receipt (受領書) as ``application/pdf``; 404 for another company's id."""
    return receipt_response(upload_id)


def create_upload() -> Any:
    svc = services()
    user = current_client(svc)
    try:
        if (request.mimetype or "") != "application/octet-stream":
            raise IntakeError("type_not_allowed")
        filename = filename_from_disposition(request.headers.get("Content-Disposition"))
        if not filename:
            raise IntakeError("bad_filename")
        if request.content_length is not None and \
                request.content_length > svc.settings.max_upload_bytes:
            # Refuse before reading a byte of the body.
            raise UploadTooLargeError()
        upload = receive_stream(svc, request.stream, user=user, filename=filename,
                                purpose_code=request.headers.get("X-Purpose", ""),
                                remote_addr=remote_addr(),
                                expected_size=request.content_length)
    except IntakeError as exc:
        if exc.code not in ("too_large", "empty", "truncated"):
            reject(svc, user, exc.code, remote_addr())
        elif exc.code == "too_large" and request.content_length is not None:
            reject(svc, user, exc.code, remote_addr())
        status = 415 if exc.code == "type_not_allowed" else exc.status
        return jsonify(error=exc.code, message=reason_text(exc.code)), status
    return jsonify(upload_json(upload)), 201


def init(app: Flask, csrf: CSRFProtect) -> None:
    # A blueprint per app (not per module), so that the factory can build
    # several apps in one process (tests, or both apps in one server).
    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    bp.add_url_rule("/purposes", view_func=list_purposes, methods=["GET"])
    bp.add_url_rule("/uploads", view_func=list_uploads, methods=["GET"])
    bp.add_url_rule("/uploads/<upload_id>", view_func=get_upload, methods=["GET"])
    bp.add_url_rule("/uploads", view_func=create_upload, methods=["POST"])
    bp.add_url_rule("/uploads/<upload_id>/receipt", view_func=get_receipt, methods=["GET"])
    csrf.exempt(bp)

    @bp.before_request
    def csrf_for_cookie_sessions() -> None:
        if not request.headers.get("Authorization", "").lower().startswith("bearer "):
            csrf.protect()

    app.register_blueprint(bp)
