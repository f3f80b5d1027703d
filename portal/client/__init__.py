"""The client-facing app: company rooms and the upload API (internet-facing).

This process holds the drop-zone key and the vault *public* key only.
"""

from __future__ import annotations

from flask import Flask, g

from ..intake import IntakeSink
from ..jobs import Jobs, make_huey
from ..services import build_services
from ..settings import Settings
from ..web.base import SINKS, create_base_app
from . import api, auth, views

PUBLIC = {"login"}


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    jobs = Jobs(make_huey(settings))
    services = build_services(settings, "client", enqueue=jobs)
    app, login, csrf = create_base_app(
        __name__, settings, services, kind="client", cookie="__Host-kinko-client",
        session_minutes=30, public=PUBLIC)

    def sink_factory() -> IntakeSink:
        sinks = g.setdefault("kinko_sinks", [])
        if sinks:
            from ..intake import IntakeError
            raise IntakeError("one_file")
        sink = IntakeSink(services, settings.max_upload_bytes)
        sinks.append(sink)
        return sink

    app.extensions[SINKS] = sink_factory
    auth.init(app, login)
    views.init(app)
    api.init(app, csrf)
    return app
