"""Client sign-in (company code, login, password) and sign-out."""

from __future__ import annotations

from typing import Any

from flask import Flask, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import select

from ..audit import Actor, Tag, record
from ..auth.passwords import verify_password
from ..auth.principal import Principal, parse_session_id
from ..models import ClientUser, Company
from ..web.base import _safe_next, remote_addr, services
from .tokens import principal_from_bearer


def principal(user: ClientUser) -> Principal:
    return Principal("client", user.id, user.login, user.display_name, user.session_epoch,
                     company_id=user.company_id)


def init(app: Flask, login: LoginManager) -> None:
    @login.user_loader
    def load(value: str) -> Principal | None:
        parsed = parse_session_id(value)
        if parsed is None:
            return None
        with services().sessions() as db:
            user = db.get(ClientUser, parsed[0])
            if user is None or not user.active or user.session_epoch != parsed[1]:
                return None
            return principal(user)

    @login.request_loader
    def from_header(req: Any) -> Principal | None:
        return principal_from_bearer(services(), req.headers.get("Authorization", ""))

    @app.route("/login", methods=["GET", "POST"], endpoint="login")
    def login_view() -> Any:
        if request.method == "GET":
            return render_template("client/login.html")
        company_code = request.form.get("company", "").strip()[:32]
        login_name = request.form.get("login", "").strip()[:64]
        password = request.form.get("password", "")[:256]
        svc = services()
        with svc.sessions() as db, db.begin():
            user = db.execute(
                select(ClientUser).join(Company)
                .where(Company.code == company_code, ClientUser.login == login_name)
            ).scalar_one_or_none()
            ok = verify_password(user.password_hash if user else None, password)
            if not ok or user is None or not user.active:
                # The same answer for an unknown account and a wrong password.
                # The attempted login is recorded only if it names a real
                # account: a password typed into the wrong field stays out.
                record(db, svc.audit_key, Tag.CLIENT_LOGIN_FAILED,
                       Actor("client", user.id, user.login) if user else Actor("anonymous"),
                       company_id=user.company_id if user else None,
                       remote_addr=remote_addr())
                failed = True
            else:
                record(db, svc.audit_key, Tag.CLIENT_LOGIN, Actor("client", user.id, user.login),
                       company_id=user.company_id, remote_addr=remote_addr())
                failed = False
                who = principal(user)
        if failed:
            flash(_("The company code, login ID or password is incorrect."), "error")
            return render_template("client/login.html"), 401
        session.clear()  # a fresh session after the password step
        login_user(who)
        session.permanent = True
        return redirect(_safe_next(request.args.get("next")) or url_for("index"))

    @app.route("/logout", methods=["POST"])
    def logout() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            record(db, svc.audit_key, Tag.CLIENT_LOGOUT,
                   Actor("client", current_user.id, current_user.login),
                   company_id=current_user.company_id, remote_addr=remote_addr())
        logout_user()
        session.clear()
        return redirect(url_for("login"))
