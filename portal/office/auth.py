"""Staff sign-in: password, then a TOTP code (the second step cannot be skipped)."""

from __future__ import annotations

from typing import Any

from flask import Flask, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import select

from ..audit import Actor, Tag, record
from ..auth import totp
from ..auth.passwords import verify_password
from ..auth.principal import Principal, parse_session_id
from ..models import Staff
from ..web.base import _safe_next, remote_addr, services

PENDING = "kinko_pending_staff"


def principal(staff: Staff) -> Principal:
    return Principal("staff", staff.id, staff.login, staff.display_name, staff.session_epoch,
                     role=staff.role)


def init(app: Flask, login: LoginManager) -> None:
    @login.user_loader
    def load(value: str) -> Principal | None:
        parsed = parse_session_id(value)
        if parsed is None:
            return None
        with services().sessions() as db:
            staff = db.get(Staff, parsed[0])
            if staff is None or not staff.active or staff.session_epoch != parsed[1]:
                return None
            return principal(staff)

    @app.route("/login", methods=["GET", "POST"], endpoint="login")
    def login_view() -> Any:
        if request.method == "GET":
            return render_template("office/login.html")
        login_name = request.form.get("login", "").strip()[:64]
        password = request.form.get("password", "")[:256]
        svc = services()
        with svc.sessions() as db, db.begin():
            staff = db.execute(select(Staff).where(Staff.login == login_name)).scalar_one_or_none()
            ok = verify_password(staff.password_hash if staff else None, password)
            if not ok or staff is None or not staff.active:
                record(db, svc.audit_key, Tag.OFFICE_LOGIN_FAILED,
                       Actor("staff", staff.id, staff.login) if staff else Actor("anonymous"),
                       remote_addr=remote_addr(), details={"step": "password"})
                staff_id = None
            else:
                staff_id = staff.id
        if staff_id is None:
            flash(_("The login ID or password is incorrect."), "error")
            return render_template("office/login.html"), 401
        session.clear()  # a fresh session after the password step
        session[PENDING] = staff_id
        return redirect(url_for("totp", next=_safe_next(request.args.get("next"))))

    @app.route("/totp", methods=["GET", "POST"], endpoint="totp")
    def totp_view() -> Any:
        staff_id = session.get(PENDING)
        if staff_id is None:
            return redirect(url_for("login"))
        if request.method == "GET":
            return render_template("office/totp.html")
        svc = services()
        with svc.sessions() as db, db.begin():
            staff = db.get(Staff, staff_id)
            ok = bool(staff and staff.active and staff.totp_secret and totp.consume(
                db, Staff, staff.id, staff.totp_secret, request.form.get("code", "")))
            record(db, svc.audit_key, Tag.OFFICE_LOGIN if ok else Tag.OFFICE_LOGIN_FAILED,
                   Actor("staff", staff_id, staff.login if staff else ""),
                   remote_addr=remote_addr(), details={"step": "totp"})
            who = principal(staff) if ok and staff else None
        if who is None:
            flash(_("The code is incorrect or was already used. Please wait for the next "
                    "code."), "error")
            return render_template("office/totp.html"), 401
        session.clear()  # and a fresh one again after the second factor
        login_user(who)
        session.permanent = True
        return redirect(_safe_next(request.args.get("next")) or url_for("index"))

    @app.route("/logout", methods=["POST"])
    def logout() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            record(db, svc.audit_key, Tag.OFFICE_LOGOUT,
                   Actor("staff", current_user.id, current_user.login),
                   remote_addr=remote_addr())
        logout_user()
        session.clear()
        return redirect(url_for("login"))
