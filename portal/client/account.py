"""The client user's own account: overview, two-step verification, API
tokens and signed-in sessions.

Only a browser session may manage the account: an API token (which the
request loader also accepts) gets 403 here, so a leaked token can neither
mint new tokens nor end the owner's sessions.  Every change is a POST
(CSRF-checked by the app) and is audited with the user as the actor.
Secrets (new API tokens, recovery codes) are rendered once in the POST's
own response, never put in the session or a flash message, and every
response is ``Cache-Control: no-store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy.orm import Session

from .. import notify
from ..audit import Tag, record
from ..auth import recovery, sessions, throttle, totp
from ..auth.passwords import verify_password
from ..auth.policy import load_policy
from ..models import ClientUser, Company
from ..web.base import remote_addr, services
from ..web.signin import actor_of
from . import tokens

KIND = "client"
# Refusals of a self-service change (wrong password or code, company policy).
TOTP_DISABLE_REFUSED = "account:totp:disable_refused"


@dataclass(frozen=True)
class TokenView:
    id: int
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class SessionView:
    created_at: datetime
    last_seen_at: datetime
    remote_addr: str | None
    user_agent: str
    current: bool


def _me(db: Session) -> ClientUser:
    user = db.get(ClientUser, current_user.id)
    if user is None:  # the loader checked it a moment ago
        abort(404)
    return user


def _audit(db: Session, action: Tag | str, user: ClientUser, **details: Any) -> None:
    svc = services()
    record(db, svc.audit_key, action, actor_of(KIND, user), company_id=user.company_id,
           remote_addr=remote_addr(), details=details or None)


def _check_code(db: Session, user: ClientUser, code: str) -> bool:
    """A current TOTP code, accepted once per time step.  Recovery codes are
    not accepted here: these pages manage the factor itself.  A failure is
    audited and counts towards the account's lockout, as at sign-in."""
    secret = user.totp_secret
    if secret and totp.consume(db, ClientUser, user.id, secret, code):
        return True
    if secret and totp.matching_step(secret, code) is not None:
        _audit(db, Tag.TOTP_REUSED, user)  # a replayed code
    else:
        _audit(db, Tag.TOTP_FAILED, user)
    _count_failure(db, user)
    return False


def _count_failure(db: Session, user: ClientUser) -> None:
    if throttle.record_failure(db, user, remote_addr()) == "locked":
        _audit(db, Tag.ACCOUNT_LOCKED, user)


def _notify(user_email: str | None, subject: str, body: str) -> None:
    notify.send(services().settings, user_email, subject, body)


def _overview(status: int = 200) -> Any:
    svc = services()
    with svc.sessions() as db:
        user = _me(db)
        company = db.get(Company, user.company_id)
        policy = load_policy(db)
        expires = (user.password_changed_at + timedelta(days=policy.expiry_days)
                   if policy.expiry_days else None)
        token_rows = [TokenView(t.id, t.label, t.created_at, t.last_used_at, t.revoked_at)
                      for t in tokens.of_user(db, user.id)]
        session_rows = [SessionView(s.created_at, s.last_seen_at, s.remote_addr, s.user_agent,
                                    sessions.is_current(s, current_user.sid))
                        for s in sessions.active(db, KIND, user.id)]
        session_rows.sort(key=lambda s: not s.current)  # this browser first
        page = render_template(
            "client/account/index.html", user=user, company=company,
            password_expires_at=expires, totp_enabled=bool(user.totp_secret),
            require_2fa=bool(company and company.require_2fa),
            recovery_left=recovery.remaining(db, KIND, user.id),
            tokens=token_rows, sessions=session_rows, label_max=tokens.LABEL_MAX)
    return page, status


def _back(anchor: str) -> Any:
    return redirect(url_for("account.overview", _anchor=anchor), 303)


def init(app: Flask) -> None:
    # A blueprint per app (see api.init): the factory may build several apps.
    bp = Blueprint("account", __name__, url_prefix="/account")

    @bp.before_request
    def browser_session_only() -> Any:
        # The app's guard has already required a client principal; here it
        # must also be a signed-in browser, not an API token.
        if not getattr(current_user, "sid", ""):
            abort(403)
        return None

    @bp.route("", methods=["GET"], endpoint="overview")
    def overview() -> Any:
        return _overview()

    # -- two-step verification ---------------------------------------------

    @bp.route("/recovery-codes", methods=["POST"], endpoint="regenerate_recovery")
    def regenerate_recovery() -> Any:
        svc = services()
        code = request.form.get("code", "")[:64]
        with svc.sessions() as db, db.begin():
            user = _me(db)
            if not user.totp_secret:
                outcome = "not_enrolled"
            elif throttle.account_state(user) != "ok":
                outcome = "wait"
            elif not _check_code(db, user, code):
                outcome = "wrong_code"
            else:
                codes = recovery.regenerate(db, KIND, user.id)
                _audit(db, Tag.RECOVERY_REGENERATED, user, count=len(codes))
                outcome = "ok"
            email = user.email
        if outcome != "ok":
            _refused(outcome)
            return _overview(400)
        _notify(email, _("[kinko] New recovery codes were issued"),
                _("New recovery codes were issued for your kinko account; the previous "
                  "codes no longer work. If this was not you, please contact the office "
                  "at once."))
        return render_template("client/account/recovery_codes.html", codes=codes)

    @bp.route("/totp/disable", methods=["POST"], endpoint="disable_totp")
    def disable_totp() -> Any:
        svc = services()
        password = request.form.get("password", "")[:1024]
        code = request.form.get("code", "")[:64]
        with svc.sessions() as db, db.begin():
            user = _me(db)
            company = db.get(Company, user.company_id)
            if not user.totp_secret:
                outcome = "not_enrolled"
            elif company is None or company.require_2fa:
                outcome = "required"
                _audit(db, TOTP_DISABLE_REFUSED, user, why="required")
            elif throttle.account_state(user) != "ok":
                outcome = "wait"
            elif not verify_password(user.password_hash, password):
                outcome = "wrong_password"
                _audit(db, TOTP_DISABLE_REFUSED, user, why="password")
                _count_failure(db, user)
            elif not _check_code(db, user, code):
                outcome = "wrong_code"
            else:
                user.totp_secret = None
                user.totp_last_step = None
                recovery.clear(db, KIND, user.id)
                _audit(db, Tag.TOTP_RESET, user, how="self_disabled")
                outcome = "ok"
            email = user.email
        if outcome != "ok":
            _refused(outcome)
            return _overview(403 if outcome == "required" else 400)
        _notify(email, _("[kinko] Two-step verification was turned off"),
                _("Two-step verification was turned off for your kinko account, and its "
                  "recovery codes were deleted. If this was not you, please contact the "
                  "office at once."))
        flash(_("Two-step verification was turned off. You can set it up again at any "
                "time."), "success")
        return _back("totp")

    # -- API tokens ----------------------------------------------------------

    @bp.route("/tokens", methods=["POST"], endpoint="create_token")
    def create_token() -> Any:
        svc = services()
        label = " ".join(request.form.get("label", "").split())
        if not label or len(label) > tokens.LABEL_MAX:
            flash(_("Please enter a name for the token (up to %(n)s characters).",
                    n=tokens.LABEL_MAX), "error")
            return _overview(400)
        with svc.sessions() as db, db.begin():
            user = _me(db)
            row, token = tokens.create(db, user.id, label)
            # The label is the user's own text: it stays out of the log.
            _audit(db, Tag.TOKEN_CREATED, user, token_id=row.id, user_id=user.id)
            email = user.email
        _notify(email, _("[kinko] A new API token was created"),
                _("A new API token was created for your kinko account. If this was not "
                  "you, please revoke it on your account page and contact the office at "
                  "once."))
        return render_template("client/account/token_created.html", token=token,
                               label=label)

    @bp.route("/tokens/<int:token_id>/revoke", methods=["POST"], endpoint="revoke_token")
    def revoke_token(token_id: int) -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            user = _me(db)
            row = tokens.owned(db, user.id, token_id)
            if row is None:
                abort(404)  # another user's token looks like no token at all
            if tokens.revoke(row):
                _audit(db, Tag.TOKEN_REVOKED, user, token_id=row.id, user_id=user.id)
        flash(_("The API token was revoked. It no longer works."), "success")
        return _back("tokens")

    # -- sessions --------------------------------------------------------------

    @bp.route("/sessions/end-others", methods=["POST"], endpoint="end_other_sessions")
    def end_other_sessions() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            user = _me(db)
            ended = sessions.end_all(db, KIND, user.id, except_token=current_user.sid)
            _audit(db, Tag.SESSIONS_ENDED, user, ended=ended)
        flash(_("You were logged out everywhere else (%(n)s sessions).", n=ended), "success")
        return _back("sessions")

    app.register_blueprint(bp)


def _refused(outcome: str) -> None:
    messages = {
        "not_enrolled": _("Two-step verification is not set up."),
        "required": _("Your company requires two-step verification, so it cannot be "
                      "turned off. You can set it up again with a new phone instead."),
        "wait": _("Too many incorrect attempts. Please wait a minute and try again."),
        "wrong_password": _("The password is incorrect."),
        "wrong_code": _("The code is incorrect or was already used. Please wait for the "
                        "next code."),
    }
    flash(messages[outcome], "error")
