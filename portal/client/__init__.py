"""The client-facing app: company rooms and the upload API (internet-facing).

This process holds the drop-zone key and the vault *public* key only.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, flash, g, jsonify, redirect, request, url_for
from flask_login import current_user

from ..intake import IntakeError, IntakeSink, reject
from ..jobs import Jobs, make_huey
from ..messages import reason_text
from ..models import ClientUser
from ..services import build_services
from ..settings import Settings
from ..web.base import SINKS, create_base_app
from . import account, api, auth, openapi, reports, tus, unlock, views

PUBLIC = {"login", "totp", "totp_enrol", "openapi"}


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    jobs = Jobs(make_huey(settings))
    services = build_services(settings, "client", enqueue=jobs)
    app, login, csrf = create_base_app(
        __name__, settings, services, kind="client", cookie="__Host-kinko-client",
        session_minutes=settings.client_idle_minutes, public=PUBLIC)

    def sink_factory() -> IntakeSink:
        sinks = g.setdefault("kinko_sinks", [])
        if sinks:
            raise IntakeError("one_file")
        # The request's length bounds the file's (multipart adds a little).
        sink = IntakeSink(services, settings.max_upload_bytes, request.content_length)
        sinks.append(sink)
        return sink

    app.extensions[SINKS] = sink_factory

    @app.errorhandler(IntakeError)
    def refused(exc: IntakeError) -> Any:
        """Refusals raised while the body is parsed (too large, two files …):
        audited like every other refusal, shown where the user came from."""
        user = current_user if current_user.is_authenticated else None
        if exc.code not in ("empty",):
            with services.sessions() as db:
                account = db.get(ClientUser, user.id) if user is not None else None
            reject(services, account, exc.code, request.remote_addr)
        if request.path.startswith("/api/"):
            return jsonify(error=exc.code, message=reason_text(exc.code)), exc.status
        flash(reason_text(exc.code), "error")
        return redirect(url_for("index")), 303
    auth.init(app, login)
    views.init(app)
    unlock.init(app)
    account.init(app)
    api.init(app, csrf)
    tus.init(app, csrf)
    reports.init(app)
    openapi.init(app)
    return app
