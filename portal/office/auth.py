"""Staff sign-in: password, then a TOTP code; enrolment first if none yet."""

from __future__ import annotations

from typing import Any

from flask import Flask, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user
from sqlalchemy import select

from ..audit import Actor, Tag, record
from ..models import Staff
from ..web import signin
from ..web.base import remote_addr, services
from ..web.password_step import password_step


def init(app: Flask, login: LoginManager) -> None:
    signin.install(app, login, "staff")

    @app.route("/login", methods=["GET", "POST"], endpoint="login")
    def login_view() -> Any:
        if request.method == "GET":
            return render_template("office/login.html")
        login_name = request.form.get("login", "").strip()[:64]

        def lookup(db: Any) -> Staff | None:
            return db.execute(select(Staff).where(Staff.login == login_name)).scalar_one_or_none()

        return password_step(lookup, "staff", request.form.get("password", "")[:1024],
                             "office/login.html")

    @app.route("/logout", methods=["POST"])
    def logout() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            record(db, svc.audit_key, Tag.OFFICE_LOGOUT,
                   Actor("staff", current_user.id, current_user.login),
                   remote_addr=remote_addr())
        signin.end_session()
        return redirect(url_for("login"))
