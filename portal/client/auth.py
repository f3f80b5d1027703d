"""Client sign-in (company code, login ID, password, then TOTP if enrolled)."""

from __future__ import annotations

from typing import Any

from flask import Flask, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user
from sqlalchemy import select

from ..audit import Actor, Tag, record
from ..models import ClientUser, Company
from ..web import signin
from ..web.base import remote_addr, services
from ..web.password_step import password_step
from .tokens import principal_from_bearer


def init(app: Flask, login: LoginManager) -> None:
    signin.install(app, login, "client")

    @login.request_loader
    def from_header(req: Any) -> Any:
        # A bearer token is an API credential only: it never opens the pages
        # (which would hand it a CSRF token and the browser forms).
        if not req.path.startswith("/api/"):
            return None
        return principal_from_bearer(services(), req.headers.get("Authorization", ""))

    @app.route("/login", methods=["GET", "POST"], endpoint="login")
    def login_view() -> Any:
        if request.method == "GET":
            return render_template("client/login.html")
        company_code = request.form.get("company", "").strip()[:32]
        login_name = request.form.get("login", "").strip()[:64]

        def lookup(db: Any) -> ClientUser | None:
            return db.execute(
                select(ClientUser).join(Company)
                .where(Company.code == company_code, ClientUser.login == login_name)
            ).scalar_one_or_none()

        return password_step(lookup, "client", request.form.get("password", "")[:1024],
                             "client/login.html")

    @app.route("/logout", methods=["POST"])
    def logout() -> Any:
        svc = services()
        with svc.sessions() as db, db.begin():
            record(db, svc.audit_key, Tag.CLIENT_LOGOUT,
                   Actor("client", current_user.id, current_user.login),
                   company_id=current_user.company_id, remote_addr=remote_addr())
        signin.end_session()
        return redirect(url_for("login"))
