"""The outbox (managers only): the notices kinko wrote instead of sending them.

Without ``KINKO_SMTP_URL`` every notice is an ``.eml`` file in
``KINKO_HOME/outbox`` (:mod:`portal.notify`); this page lists them, newest
first, and shows one.  With SMTP configured nothing is kept here and the
page says so.  Notices carry no file names or personal data by design
(:mod:`portal.notices`), but they do name companies and addresses, so only
a manager may read them.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

from flask import Flask, abort, render_template

from .. import notify
from ..web.base import services
from .admin import manager_required

LIMIT = 200
MAX_BYTES = 256 * 1024
_NAME = re.compile(r"[0-9A-Za-z_-]{1,80}\.eml")


@dataclass(frozen=True)
class Notice:
    name: str
    at: datetime | None
    to: str
    subject: str
    body: str


def _read(path: Path) -> Notice | None:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES)
    except OSError:
        return None
    msg = cast(EmailMessage, email.message_from_bytes(raw, policy=policy.default))
    at: datetime | None
    try:
        at = parsedate_to_datetime(str(msg["Date"])) if msg["Date"] else None
    except (TypeError, ValueError):
        at = None
    if at is None:
        at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    part = msg.get_body(preferencelist=("plain",))
    body = part.get_content() if isinstance(part, EmailMessage) else ""
    return Notice(path.name, at, str(msg["To"] or ""), str(msg["Subject"] or ""), str(body))


def _files(outbox: Path) -> list[Path]:
    if not outbox.is_dir():
        return []
    files = [p for p in outbox.iterdir() if p.is_file() and _NAME.fullmatch(p.name)]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)[:LIMIT]


def init(app: Flask) -> None:
    @app.route("/outbox")
    @manager_required
    def outbox() -> Any:
        settings = services().settings
        if settings.smtp_url:
            return render_template("office/outbox.html", smtp=True, notices=[], notice=None)
        notices = [n for n in (_read(p) for p in _files(notify.outbox_dir(settings))) if n]
        return render_template("office/outbox.html", smtp=False, notices=notices, notice=None)

    @app.route("/outbox/<name>")
    @manager_required
    def outbox_notice(name: str) -> Any:
        settings = services().settings
        if settings.smtp_url or not _NAME.fullmatch(name):
            abort(404)
        path = notify.outbox_dir(settings) / name
        notice = _read(path) if path.is_file() else None
        if notice is None:
            abort(404)
        return render_template("office/outbox.html", smtp=False, notices=[], notice=notice)
