"""The common skeleton of the client app and the office app.

* deny-by-default: a ``before_request`` guard lets through only endpoints
  listed as public; every other endpoint needs a principal of the app's kind;
* Werkzeug never spools a multipart file to /tmp: files go to the app's
  sink factory (the client app encrypts them; the office app accepts none);
* security headers on every response; a generic error page with a reference
  id, never a traceback; CSRF on every state-changing request;
* a locked or unreachable database gives 503 with Retry-After, never a 500;
  a refused upload's unread body is drained (bounded) so the client reads
  the answer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from flask import (
    Flask,
    Request,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import Babel, get_locale
from flask_babel import gettext as _
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import BadRequest, HTTPException

from ..audit import Actor, Tag, record
from ..intake import IntakeError
from ..messages import REASONS, STATUS_LABELS, password_issue, reason_text
from ..services import Services
from ..settings import Settings

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
JST = ZoneInfo("Asia/Tokyo")
RETRY_AFTER_S = 5  # Retry-After of a 503 while the database is locked or unreachable
# A refusal (503 or 507 for storage, a redirect back to the room with the
# reason, ...) sent while the client is still sending its body: read (and drop)
# the rest first, up to this much, so that the client reads the answer rather
# than a connection reset (gunicorn itself drains only 64 KiB, then closes).
DRAIN_MAX_BYTES = 64 << 20
DRAIN_MAX_SECONDS = 30.0
LANGS = ("ja", "en")
SINKS = "kinko.sink_factory"


class KinkoRequest(Request):
    """Multipart file parts go to the app's sink factory, never to a temp file."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> Any:
        factory = current_app.extensions.get(SINKS)
        if factory is None:
            raise BadRequest("file uploads are not accepted here")
        return factory()


def create_base_app(name: str, settings: Settings, services: Services, *, kind: str,
                    cookie: str, session_minutes: int, public: Iterable[str],
                    allowed_networks: Iterable[str] | None = None,
                    ) -> tuple[Flask, LoginManager, CSRFProtect]:
    app = Flask(name, template_folder=str(ROOT / "templates"),
                static_folder=str(ROOT / "static"))
    app.request_class = KinkoRequest
    app_key = "client" if kind == "client" else "office"
    secret = (settings.keys_dir / f"session-{app_key}.key").read_bytes()
    if len(secret) < 32:
        raise RuntimeError("session key missing or too short: run `kinko init`")
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME=cookie,  # __Host-: Secure, Path=/, no Domain
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=session_minutes),
        SESSION_REFRESH_EACH_REQUEST=True,
        # Multipart framing adds a little over the file itself.
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + (1 << 20),
        # Text fields only (files go to the sink); must exceed the 64 KiB chunks
        # Werkzeug feeds its multipart parser, which it checks against this.
        MAX_FORM_MEMORY_SIZE=1 << 20,
        MAX_FORM_PARTS=50,
        WTF_CSRF_TIME_LIMIT=None,  # bound to the session, which itself expires
        WTF_CSRF_SSL_STRICT=True,
        BABEL_DEFAULT_LOCALE="ja",
        BABEL_DEFAULT_TIMEZONE="Asia/Tokyo",
        BABEL_TRANSLATION_DIRECTORIES=str(ROOT / "portal" / "translations"),
    )
    app.extensions["kinko.services"] = services
    app.config["KINKO_APP_KIND"] = kind
    public_endpoints = set(public) | {"static", "set_language"}
    # Reachable while a password change is forced: nothing else is.
    change_endpoints = {"change_password", "logout", "static", "set_language"}

    login = LoginManager()
    login.init_app(app)
    login.login_view = "login"
    login.session_protection = "strong"

    networks = [ipaddress.ip_network(n) for n in allowed_networks or []]

    if networks:
        @app.before_request
        def address_allow_list() -> Any:
            # The office console is for the office network only: anything
            # else is refused before any other code runs.
            try:
                addr = ipaddress.ip_address(request.remote_addr or "")
            except ValueError:
                addr = None
            if addr is not None and any(addr in net for net in networks):
                return None
            with services.sessions() as db, db.begin():
                record(db, services.audit_key, Tag.ACCESS_DENIED, Actor("anonymous"),
                       remote_addr=request.remote_addr, details={"why": "address_not_allowed"})
            return error_response(403, "forbidden", _("You do not have access to this page."))

    @app.before_request
    def guard() -> Any:
        # Registered before CSRFProtect so an anonymous request is refused
        # before its body is parsed at all.
        if request.endpoint in public_endpoints:
            return None
        user = current_user
        if user.is_authenticated and getattr(user, "kind", None) == kind:
            if getattr(user, "must_change", False) and request.endpoint not in change_endpoints:
                if request.path.startswith("/api/"):
                    return jsonify(error="password_change_required",
                                   message=_("Please change your password first.")), 403
                return redirect(url_for("change_password"))
            return None
        if request.path.startswith("/api/"):
            return jsonify(error="unauthorized", message=_("Please log in.")), 401
        return redirect(url_for("login", next=request.full_path if request.method == "GET"
                                else None))

    csrf = CSRFProtect(app)

    Babel(app, locale_selector=_select_locale)
    _install_helpers(app)
    _install_headers(app)
    _install_errors(app)

    @app.route("/lang/<code>", methods=["POST"])
    def set_language(code: str) -> Any:
        resp = redirect(_safe_next(request.form.get("next")) or url_for("index"))
        if code in LANGS:
            set_language_cookie(resp, code)
            user = current_user
            if user.is_authenticated and getattr(user, "kind", None) == kind:
                # Signed in: the choice is the account's, for its e-mails and PDFs too.
                save_language(services, user.kind, user.id, code, remote_addr())
        return resp

    @app.after_request
    def _drain_refused_body(resp: Any) -> Any:
        if resp.status_code == 503:  # storage or database: worth retrying soon
            resp.headers.setdefault("Retry-After", str(RETRY_AFTER_S))
        # Only refusals of an upload under way (a sink was opened, or storage or
        # the database failed) or of a signed-in client's request (e.g. a tus
        # PATCH to an expired upload: it must read 404/409/410, not a reset).
        # An anonymous request is never read further.
        # (g._login_user: whoever Flask-Login already loaded; never a new DB query here.)
        signed_in = bool(getattr(g.get("_login_user"), "is_authenticated", False))
        refused_upload = resp.status_code in (503, 507) or (resp.status_code >= 300 and (
            bool(g.get("kinko_sinks")) or signed_in))
        length = request.content_length
        if refused_upload and length and length <= DRAIN_MAX_BYTES:
            deadline = time.monotonic() + DRAIN_MAX_SECONDS
            with contextlib.suppress(Exception):  # a client that went away: nothing to do
                while time.monotonic() < deadline and request.stream.read(1 << 20):
                    pass
        return resp

    @app.teardown_request
    def _abort_unclaimed_sinks(_exc: BaseException | None) -> None:
        for sink in g.pop("kinko_sinks", []):
            if not sink.finished:
                sink.abort()

    return app, login, csrf


def set_language_cookie(resp: Any, code: str) -> None:
    resp.set_cookie("kinko_lang", code, max_age=365 * 86400, secure=True,
                    httponly=True, samesite="Lax")


def save_language(svc: Services, kind: str, account_id: int, code: str,
                  addr: str | None) -> None:
    """Store ``code`` as the account's language (audited when it changes)."""
    from ..models import ClientUser, Staff

    model: Any = ClientUser if kind == "client" else Staff
    with svc.sessions() as db, db.begin():
        account = db.get(model, account_id)
        if account is None or account.language == code:
            return
        old, account.language = account.language, code
        record(db, svc.audit_key, Tag.LANGUAGE_CHANGED, Actor(kind, account.id, account.login),
               company_id=getattr(account, "company_id", None), remote_addr=addr,
               details={"old": old, "new": code})


def _safe_next(target: str | None) -> str | None:
    """Only same-site relative paths: no open redirects."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _select_locale() -> str:
    lang = request.cookies.get("kinko_lang")
    return lang if lang in LANGS else "ja"


def _install_helpers(app: Flask) -> None:
    @app.template_filter("jst")
    def jst(value: Any) -> str:
        if value is None:
            return ""
        if value.tzinfo is None:
            from datetime import UTC
            value = value.replace(tzinfo=UTC)
        local = value.astimezone(JST)
        if str(get_locale()) == "ja":
            return local.strftime("%Y年%m月%d日 %H:%M")
        return local.strftime("%Y-%m-%d %H:%M JST")

    @app.template_filter("filesize")
    def filesize(n: int | None) -> str:
        if n is None:
            return ""
        size = float(n)
        for unit in ("B", "KB", "MB", "GB"):
            if size < 1024 or unit == "GB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
        return f"{n} B"

    @app.context_processor
    def inject() -> dict[str, Any]:
        return {"status_label": lambda s: str(STATUS_LABELS.get(s, s)),
                "app_kind": app.config.get("KINKO_APP_KIND"),
                "reason_text": reason_text, "current_lang": str(get_locale()),
                "password_issue": password_issue,
                "REASONS": REASONS}


def _install_headers(app: Flask) -> None:
    @app.after_request
    def headers(resp: Any) -> Any:
        h = resp.headers
        h["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        h["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        # same-origin: our own CSRF check (WTF_CSRF_SSL_STRICT) needs the Referer
        # on same-site posts; no other site ever sees our URLs.
        h["Referrer-Policy"] = "same-origin"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.endpoint != "static":
            h["Cache-Control"] = "no-store"
            h["Pragma"] = "no-cache"
        h.pop("Server", None)
        return resp


def error_response(status: int, code: str, message: str) -> Any:
    if request.path.startswith("/api/"):
        return jsonify(error=code, message=message), status
    return render_template("error.html", status=status, message=message, ref=None), status


def _install_errors(app: Flask) -> None:
    @app.errorhandler(IntakeError)
    def intake_error(exc: IntakeError) -> Any:
        return error_response(exc.status, exc.code, reason_text(exc.code))

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError) -> Any:
        return error_response(400, "csrf", _("The form expired or was sent from another "
                                             "page. Please reload the page and try again."))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        # A database error outside the view (opening or saving the session)
        # reaches Flask as a 500 wrapping it: still a 503, not a 500.
        original = getattr(exc, "original_exception", None)
        if isinstance(original, (OperationalError, PoolTimeoutError)):
            return database_busy(original)
        status = exc.code or 500
        messages: dict[int, Callable[[], str]] = {
            400: lambda: _("The request could not be understood."),
            403: lambda: _("You do not have access to this page."),
            404: lambda: _("Not found."),
            405: lambda: _("This action is not allowed here."),
            413: lambda: reason_text("too_large"),
        }
        msg = messages.get(status, lambda: _("The request could not be completed."))()
        code = {413: "too_large", 404: "not_found"}.get(status, f"http_{status}")
        return error_response(status, code, msg)

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeoutError)
    def database_busy(exc: Exception) -> Any:
        # "database is locked" past KINKO_DB_BUSY_TIMEOUT_MS, a lock or
        # statement timeout, a lost connection: the request did nothing
        # (its transaction rolled back), so the client may simply retry.
        ref = secrets.token_hex(6)
        log.warning("database unavailable ref=%s on %s %s: %s", ref, request.method,
                    request.path, type(exc).__name__)
        # The page must not need the database either: Flask-Login's template
        # context would load the user again, so it sees an anonymous one.
        g._login_user = current_app.login_manager.anonymous_user()  # type: ignore[attr-defined]
        resp = make_response(error_response(503, "unavailable", _(
            "The service is busy right now. Nothing was changed; please try again in a "
            "moment.")))
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        ref = secrets.token_hex(6)
        # The traceback goes to the server log under a reference id; the
        # user sees only the id.  SQL parameters are hidden by the engine.
        log.exception("unhandled error ref=%s on %s %s", ref, request.method, request.path)
        msg = _("Something went wrong on our side. Please try again later. "
                "Reference: %(ref)s", ref=ref)
        if request.path.startswith("/api/"):
            return jsonify(error="internal", message=msg, ref=ref), 500
        return render_template("error.html", status=500, message=msg, ref=ref), 500


def remote_addr() -> str | None:
    return request.remote_addr


def services() -> Services:
    svc: Services = current_app.extensions["kinko.services"]
    return svc
