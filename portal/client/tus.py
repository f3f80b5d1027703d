"""tus 1.0.0 at ``/api/v1/tus/``: core, creation, termination, expiration.

Protocol: https://tus.io/protocols/resumable-upload (1.0.0).  The state,
encryption and assembly are :mod:`portal.tus`; this module only speaks HTTP.

* ``OPTIONS /api/v1/tus/`` → 204 with ``Tus-Version``, ``Tus-Extension``,
  ``Tus-Max-Size``.  Like every other route it needs a signed-in client
  (deny by default; the browser never pre-flights a same-origin request).
* ``POST /api/v1/tus/`` with ``Upload-Length`` and ``Upload-Metadata``
  (``filename`` and ``purpose``, base64) → 201, ``Location``, ``Upload-Expires``.
* ``HEAD /api/v1/tus/<id>`` → ``Upload-Offset``, ``Upload-Length``,
  ``Upload-Expires``; once assembled also ``Kinko-Upload-Id``.
* ``PATCH /api/v1/tus/<id>`` with ``Content-Type: application/offset+octet-stream``
  and ``Upload-Offset`` → 204 and the new ``Upload-Offset``; the PATCH that
  completes the file answers once it is an ordinary upload, with
  ``Kinko-Upload-Id`` (follow it at ``/api/v1/uploads/<id>``).
* ``DELETE /api/v1/tus/<id>`` → 204 (termination).

Every request but OPTIONS must carry ``Tus-Resumable: 1.0.0`` (else 412).
Authentication and CSRF are those of ``/api/v1`` (:mod:`portal.client.api`):
a bearer token, or the session cookie plus the ``X-CSRFToken`` header.
Errors are ``{"error", "message"}`` JSON, Japanese first, and audited.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import ClientDisconnected
from werkzeug.http import http_date

from .. import tus
from ..intake import reject
from ..messages import REASONS, reason_text
from ..web.base import remote_addr, services
from .views import current_client

log = logging.getLogger(__name__)

VERSION = "1.0.0"
EXTENSIONS = "creation,termination,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
_DIGITS = re.compile(r"[0-9]{1,19}")
_META_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma

MESSAGES = {
    "tus_version": _l("This address speaks the tus protocol version 1.0.0 only. Please send "
                      "the header Tus-Resumable: 1.0.0."),
    "bad_length": _l("Upload-Length must be given as a whole number of bytes."),
    "bad_offset": _l("Upload-Offset must be given as a whole number of bytes."),
    "bad_metadata": _l("Upload-Metadata could not be read. Send the file name and the "
                       "purpose of use as filename and purpose, each encoded in base64."),
    "bad_content_type": _l("The data must be sent with Content-Type: "
                           "application/offset+octet-stream."),
    "offset_mismatch": _l("Upload-Offset does not match the data the server has received. "
                          "Ask for the current offset (HEAD) and continue from there."),
    "exceeds_length": _l("More data was sent than the Upload-Length given when the upload "
                         "was created."),
    "too_many_parts": _l("The file was sent in too many small pieces. Please send it again "
                         "in larger pieces (8 MiB or more)."),
    "expired": _l("This upload has expired because nothing arrived for 24 hours. Please "
                  "upload the file again."),
}


def message(code: str) -> str:
    text = MESSAGES.get(code)
    if text is not None:
        return str(text)
    return reason_text(code) if code in REASONS else reason_text("malformed")


def refuse(code: str, status: int) -> Any:
    """Audit the refusal (never a file name or content) and answer JSON."""
    svc = services()
    reject(svc, current_client(svc), code, remote_addr())
    resp = jsonify(error=code, message=message(code))
    resp.status_code = status
    return resp


def _expires(state: tus.State) -> str:
    return http_date(state.expires_at)


def _state_headers(resp: Response, state: tus.State) -> Response:
    resp.headers["Upload-Offset"] = str(state.offset)
    resp.headers["Upload-Expires"] = _expires(state)
    if state.upload_id is not None:
        resp.headers["Kinko-Upload-Id"] = state.upload_id
    return resp


def parse_metadata(header: str | None) -> dict[str, str] | None:
    """``key base64,key base64`` (tus 1.0.0 creation); None when malformed.
    Values must be UTF-8; keys must be unique."""
    out: dict[str, str] = {}
    if not header:
        return out
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not _META_KEY.fullmatch(key) or key in out:
            return None
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return out


class _Body:
    """The request body; a broken connection reads as its end, so that the
    prefix that did arrive is kept (see :mod:`portal.tus`)."""

    def __init__(self, stream: Callable[[], Any]) -> None:
        self._open = stream
        self._stream: Any = None
        self.broken = False

    def read(self, n: int) -> bytes:
        if self.broken:
            return b""
        try:
            if self._stream is None:
                self._stream = self._open()
            data: bytes = self._stream.read(n)
        except (OSError, ClientDisconnected) as exc:
            log.info("tus PATCH body broke off: %s", type(exc).__name__)
            self.broken = True
            return b""
        return data


def options() -> Any:
    resp = Response(status=204)
    resp.headers["Tus-Version"] = VERSION
    resp.headers["Tus-Extension"] = EXTENSIONS
    resp.headers["Tus-Max-Size"] = str(services().settings.max_upload_bytes)
    return resp


def create() -> Any:
    svc = services()
    raw = request.headers.get("Upload-Length", "")
    if "Upload-Defer-Length" in request.headers or not _DIGITS.fullmatch(raw):
        return refuse("bad_length", 400)
    meta = parse_metadata(request.headers.get("Upload-Metadata"))
    if meta is None or "filename" not in meta or "purpose" not in meta:
        return refuse("bad_metadata", 400)
    try:
        state = tus.create(svc, current_client(svc), length=int(raw),
                           filename=meta["filename"], purpose_code=meta["purpose"],
                           remote_addr=remote_addr())
    except tus.TusError as exc:
        return refuse(exc.code, exc.status)
    resp = Response(status=201)
    resp.headers["Location"] = f"{request.script_root}/api/v1/tus/{state.id}"
    resp.headers["Upload-Expires"] = _expires(state)
    return resp


def head(tus_id: str) -> Any:
    svc = services()
    try:
        state = tus.lookup(svc, current_client(svc).company_id, tus_id)
    except tus.TusError as exc:
        return refuse(exc.code, exc.status)
    resp = _state_headers(Response(status=200), state)
    resp.headers["Upload-Length"] = str(state.length)
    return resp


def patch(tus_id: str) -> Any:
    svc = services()
    if (request.mimetype or "") != OFFSET_TYPE:
        return refuse("bad_content_type", 415)
    raw = request.headers.get("Upload-Offset", "")
    if not _DIGITS.fullmatch(raw):
        return refuse("bad_offset", 400)
    body = _Body(lambda: request.stream)
    try:
        state = tus.append(svc, current_client(svc), tus_id, offset=int(raw), stream=body,
                           content_length=request.content_length, remote_addr=remote_addr())
    except tus.TusError as exc:
        return refuse(exc.code, exc.status)
    return _state_headers(Response(status=204), state)


def terminate(tus_id: str) -> Any:
    svc = services()
    try:
        tus.terminate(svc, current_client(svc), tus_id, remote_addr())
    except tus.TusError as exc:
        return refuse(exc.code, exc.status)
    return Response(status=204)


def init(app: Flask, csrf: CSRFProtect) -> None:
    bp = Blueprint("tus", __name__, url_prefix="/api/v1/tus")
    bp.add_url_rule("/", view_func=options, methods=["OPTIONS"], endpoint="options",
                    provide_automatic_options=False)
    bp.add_url_rule("/", view_func=create, methods=["POST"], endpoint="create",
                    provide_automatic_options=False)
    bp.add_url_rule("/<tus_id>", view_func=head, methods=["HEAD"], endpoint="head")
    bp.add_url_rule("/<tus_id>", view_func=patch, methods=["PATCH"], endpoint="patch")
    bp.add_url_rule("/<tus_id>", view_func=terminate, methods=["DELETE"], endpoint="terminate")
    csrf.exempt(bp)

    @bp.before_request
    def tus_checks() -> Any:
        # CSRF exactly as /api/v1: a cookie session must send the header.
        if not request.headers.get("Authorization", "").lower().startswith("bearer "):
            csrf.protect()
        if request.method != "OPTIONS" and request.headers.get("Tus-Resumable") != VERSION:
            resp = refuse("tus_version", 412)
            resp.headers["Tus-Version"] = VERSION
            return resp
        return None

    @bp.after_request
    def tus_headers(resp: Response) -> Response:
        resp.headers["Tus-Resumable"] = VERSION
        resp.headers["Cache-Control"] = "no-store"
        return resp

    app.register_blueprint(bp)
