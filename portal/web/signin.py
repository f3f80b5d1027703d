"""Sign-in steps shared by both apps: second factor, enrolment, forced
password change, server-side sessions.

The flow: password step (app-specific form) → :func:`after_password`, which
either completes the sign-in or parks the account in a *pending* state in
the session (never a logged-in state) until the TOTP step or the TOTP
enrolment succeeds.  Each step that changes the trust level issues a new
session: ``session.clear()`` and a fresh server-side session token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import timedelta
from typing import Any

import pyotp
from flask import Flask, current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy.orm import Session

from .. import notify
from ..audit import Actor, Tag, record
from ..auth import recovery, sessions, throttle, totp
from ..auth.passwords import hash_password, verify_password
from ..auth.policy import load_policy, problems
from ..auth.principal import Principal
from ..models import ClientUser, Company, PasswordHistory, Staff, utcnow
from .base import LANGS, _safe_next, remote_addr, services, set_language_cookie

PENDING = "kinko_pending"
ENROL_NONCE = "kinko_enrol_nonce"
PENDING_MAX_AGE_S = 600
MODELS: dict[str, Any] = {"client": ClientUser, "staff": Staff}
ISSUER = "kinko"


def actor_of(kind: str, account: Any) -> Actor:
    return Actor(kind, account.id, account.login)


def company_of(kind: str, account: Any) -> int | None:
    return account.company_id if kind == "client" else None


def needs_change(db: Session, account: Any) -> bool:
    return bool(account.must_change_password
                or load_policy(db).is_expired(account.password_changed_at))


def principal(kind: str, account: Any, sid: str, must_change: bool) -> Principal:
    return Principal(kind, account.id, account.login, account.display_name,
                     account.session_epoch, company_id=company_of(kind, account),
                     role=getattr(account, "role", None), sid=sid, must_change=must_change)


def idle_for(kind: str) -> timedelta:
    s = services().settings
    return timedelta(minutes=s.client_idle_minutes if kind == "client" else s.staff_idle_minutes)


def install(app: Flask, login: LoginManager, kind: str) -> None:
    """User loader, the TOTP step, enrolment and the password change page."""
    model = MODELS[kind]

    @login.user_loader
    def load(token: str) -> Principal | None:
        svc = services()
        with svc.sessions() as db, db.begin():
            row = sessions.resolve(db, token, kind, idle_for(kind))
            if row is None:
                return None
            account = db.get(model, row.account_id)
            if account is None or not account.active or account.locked_at is not None:
                return None
            return principal(kind, account, token, needs_change(db, account))

    @app.route("/totp", methods=["GET", "POST"], endpoint="totp")
    def totp_step() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            account = pending_account(db, kind, "totp")
            if account is None:
                return redirect(url_for("login"))
            if request.method == "GET":
                return render_template("auth/totp.html")
            code = request.form.get("code", "").strip()
            ok, how = check_second_factor(db, kind, account, code)
            if not ok:
                if throttle.record_failure(db, account, remote_addr()) == "locked":
                    record(db, svc.audit_key, Tag.ACCOUNT_LOCKED, actor_of(kind, account),
                           company_id=company_of(kind, account), remote_addr=remote_addr())
            who = account if ok else None
        if who is None:
            flash(_("The code is incorrect or was already used. Please wait for the next "
                    "code."), "error")
            return render_template("auth/totp.html"), 401
        if how == "recovery":
            flash(_("You signed in with a recovery code. Each code works only once."), "info")
        return complete(kind, who.id)

    @app.route("/totp/enrol", methods=["GET", "POST"], endpoint="totp_enrol")
    def totp_enrol() -> Any:
        svc = services()
        signed_in = current_user.is_authenticated and current_user.kind == kind
        with svc.sessions() as db, db.begin():
            account = (db.get(model, current_user.id) if signed_in
                       else pending_account(db, kind, "enrol"))
            if account is None:
                return redirect(url_for("login"))
            secret = enrol_secret(kind, account.id)
            if request.method == "GET":
                return render_enrol(kind, account, secret, signed_in=signed_in)
            if signed_in and not verify_password(
                    account.password_hash, request.form.get("current_password", "")[:1024]):
                # A stolen session must not be enough to take over the second
                # factor: replacing it needs the password too.
                record(db, svc.audit_key, Tag.TOTP_FAILED, actor_of(kind, account),
                       company_id=company_of(kind, account), remote_addr=remote_addr(),
                       details={"step": "enrol", "why": "password"})
                throttle.record_failure(db, account, remote_addr())
                flash(_("The current password is incorrect."), "error")
                return render_enrol(kind, account, secret, signed_in=True), 400
            step = totp.matching_step(secret, request.form.get("code", ""))
            if step is None:
                flash(_("The code is incorrect. Check the time on your phone and try the "
                        "current code."), "error")
                return render_enrol(kind, account, secret, signed_in=signed_in), 400
            account.totp_secret, account.totp_last_step = secret, step
            codes = recovery.regenerate(db, kind, account.id)
            record(db, svc.audit_key, Tag.TOTP_ENROLLED, actor_of(kind, account),
                   company_id=company_of(kind, account), remote_addr=remote_addr())
            email, account_id = account.email, account.id
        session.pop(ENROL_NONCE, None)
        notify.send(svc.settings, email, _("[kinko] Two-step verification was set up"),
                    _("Two-step verification was set up for your kinko account. If this "
                      "was not you, please contact the office at once."))
        if not signed_in:
            complete(kind, account_id)
        return render_template("auth/recovery_codes.html", codes=codes)

    @app.route("/password", methods=["GET", "POST"], endpoint="change_password")
    def change_password() -> Any:
        svc = services()
        if request.method == "GET":
            return render_template("auth/password.html", forced=current_user.must_change)
        with svc.sessions() as db, db.begin():
            account = db.get(model, current_user.id)
            assert account is not None
            policy = load_policy(db)
            new = request.form.get("new_password", "")
            issues: list[str] = []
            if not verify_password(account.password_hash,
                                   request.form.get("current_password", "")[:1024]):
                issues.append("wrong_current")
            elif new != request.form.get("new_password_confirm", ""):
                issues.append("mismatch")
            else:
                history = [account.password_hash] + [
                    h.password_hash for h in db.query(PasswordHistory).filter_by(
                        kind=kind, account_id=account.id)
                    .order_by(PasswordHistory.id.desc()).limit(policy.history)]
                issues = problems(policy, new, login=account.login,
                                  previous_hashes=history if policy.history else [])
            if issues:
                record(db, svc.audit_key, Tag.PASSWORD_CHANGE_FAILED, actor_of(kind, account),
                       company_id=company_of(kind, account), remote_addr=remote_addr(),
                       details={"rules": issues})
            else:
                set_password(db, kind, account, new)
                sessions.end_all(db, kind, account.id, except_token=current_user.sid)
                record(db, svc.audit_key, Tag.PASSWORD_CHANGED, actor_of(kind, account),
                       company_id=company_of(kind, account), remote_addr=remote_addr())
                email, account_id = account.email, account.id
        if issues:
            return render_template("auth/password.html", forced=current_user.must_change,
                                   issues=issues, policy=policy), 400
        notify.send(svc.settings, email, _("[kinko] Your password was changed"),
                    _("The password of your kinko account was changed. If this was not "
                      "you, please contact the office at once."))
        flash(_("Your password was changed."), "success")
        return complete(kind, account_id)  # a fresh session at the new trust level


def set_password(db: Session, kind: str, account: Any, new: str) -> None:
    """Store a new password (policy already checked) and keep the history."""
    db.add(PasswordHistory(kind=kind, account_id=account.id,
                           password_hash=account.password_hash))
    account.password_hash = hash_password(new)
    account.password_changed_at = utcnow()
    account.must_change_password = False


def check_second_factor(db: Session, kind: str, account: Any, code: str) -> tuple[bool, str]:
    """A TOTP code (once per time step) or an unused recovery code."""
    svc = services()
    who = actor_of(kind, account)
    if account.totp_secret and totp.consume(db, MODELS[kind], account.id,
                                            account.totp_secret, code):
        return True, "totp"
    if account.totp_secret and totp.matching_step(account.totp_secret, code) is not None:
        # A valid code for a step already used: a replay, perhaps a stolen code.
        record(db, svc.audit_key, Tag.TOTP_REUSED, who, company_id=company_of(kind, account),
               remote_addr=remote_addr())
        return False, "reused"
    if len(code) > 6 and recovery.consume(db, kind, account.id, code):
        record(db, svc.audit_key, Tag.RECOVERY_USED, who, company_id=company_of(kind, account),
               remote_addr=remote_addr(),
               details={"remaining": recovery.remaining(db, kind, account.id)})
        return True, "recovery"
    record(db, svc.audit_key, Tag.TOTP_FAILED, who, company_id=company_of(kind, account),
           remote_addr=remote_addr())
    return False, "wrong"


def enrol_secret(kind: str, account_id: int) -> str:
    """The secret being enrolled, derived on the server from a per-attempt
    nonce: the cookie (signed, not encrypted) never carries the secret."""
    nonce = session.get(ENROL_NONCE)
    if not nonce:
        nonce = session[ENROL_NONCE] = secrets.token_hex(16)
    mac = hmac.new(current_app.secret_key if isinstance(current_app.secret_key, bytes)
                   else str(current_app.secret_key).encode(),
                   f"totp-enrol:{kind}:{account_id}:{nonce}".encode(), hashlib.sha256)
    return base64.b32encode(mac.digest()[:20]).decode()


def render_enrol(kind: str, account: Any, secret: str, *, signed_in: bool = False) -> Any:
    import segno  # here, not at the top: only enrolment draws a QR code (0.7 MB)

    uri = pyotp.TOTP(secret).provisioning_uri(name=account.login, issuer_name=ISSUER)
    qr = segno.make(uri, error="m").svg_data_uri(scale=5, border=2)
    spaced = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return render_template("auth/totp_enrol.html", qr=qr, secret=spaced, uri=uri,
                           signed_in=signed_in)


def pending_account(db: Session, kind: str, step: str) -> Any | None:
    data = session.get(PENDING)
    if not data or data.get("kind") != kind or data.get("step") != step:
        return None
    if time.time() - float(data.get("at", 0)) > PENDING_MAX_AGE_S:
        session.pop(PENDING, None)
        return None
    account = db.get(MODELS[kind], data["id"])
    if account is None or not account.active or account.locked_at is not None:
        return None
    return account


def after_password(db: Session, kind: str, account: Any) -> Any:
    """Password accepted: decide the next step.  Returns a response."""
    if account.totp_secret:
        step = "totp"
    elif kind == "staff" or _company_requires_2fa(db, account):
        step = "enrol"  # staff must enrol before they can see anything
    else:
        step = None
    session.clear()  # a new session after the password step
    if step is None:
        return None
    session[PENDING] = {"kind": kind, "id": account.id, "step": step, "at": time.time()}
    nxt = _safe_next(request.args.get("next"))
    return redirect(url_for("totp" if step == "totp" else "totp_enrol", next=nxt))


def _company_requires_2fa(db: Session, account: Any) -> bool:
    company = db.get(Company, account.company_id)
    return bool(company and company.require_2fa)


def complete(kind: str, account_id: int) -> Any:
    """Every factor passed: start a fresh server-side session."""
    svc = services()
    nxt = _safe_next(request.args.get("next"))
    with svc.sessions() as db, db.begin():
        account = db.get(MODELS[kind], account_id)
        assert account is not None
        token = sessions.start(db, kind, account.id, remote_addr=remote_addr(),
                               user_agent=request.headers.get("User-Agent", ""),
                               absolute=timedelta(hours=svc.settings.session_absolute_hours))
        who = principal(kind, account, token, needs_change(db, account))
        language = account.language if account.language in LANGS else "ja"
        record(db, svc.audit_key, Tag.CLIENT_LOGIN if kind == "client" else Tag.OFFICE_LOGIN,
               actor_of(kind, account), company_id=company_of(kind, account),
               remote_addr=remote_addr())
    session.clear()
    login_user(who)
    session.permanent = True
    # The account's saved language from now on (pages, e-mails and PDFs alike).
    resp = redirect(url_for("change_password") if who.must_change else nxt or url_for("index"))
    set_language_cookie(resp, language)
    return resp


def end_session() -> None:
    svc = services()
    with svc.sessions() as db, db.begin():
        sessions.end(db, getattr(current_user, "sid", ""))
    logout_user()
    session.clear()
