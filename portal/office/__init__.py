"""The staff console (office network only; bound to 127.0.0.1 by default).

The only process, with the CLI, that loads the vault private key.
"""

from __future__ import annotations

from flask import Flask

from ..jobs import Jobs, make_huey
from ..services import build_services
from ..settings import Settings
from ..web.base import create_base_app
from . import admin, auditlog, auth, disposal, outbox, purposes, retention, views
from . import reports as report_views

PUBLIC = {"login", "totp", "totp_enrol"}


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    jobs = Jobs(make_huey(settings))
    services = build_services(settings, "office", enqueue=jobs)
    app, login, _csrf = create_base_app(
        __name__, settings, services, kind="staff", cookie="__Host-kinko-office",
        session_minutes=settings.staff_idle_minutes, public=PUBLIC,
        allowed_networks=settings.office_allowed_networks)
    # No sink factory: the office app accepts no file uploads at all.
    auth.init(app, login)
    views.init(app)
    admin.init(app)
    disposal.init(app)
    outbox.init(app)
    purposes.init(app)
    retention.init(app)
    auditlog.init(app)
    report_views.init(app)
    return app
