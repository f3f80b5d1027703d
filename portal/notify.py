"""Notices by e-mail: SMTP when KINKO_SMTP_URL is set, else an outbox folder.

A notice never carries a file name, a number or a secret: only which
company, how many, and what kind of event.
"""

from __future__ import annotations

import logging
import os
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from urllib.parse import unquote, urlparse

from .settings import Settings

log = logging.getLogger(__name__)


def send(settings: Settings, to: str | None, subject: str, body: str) -> None:
    if not to:
        return
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    if settings.smtp_url is None:
        outbox = settings.home / "outbox"
        outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}.eml"
        fd = os.open(outbox / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msg.as_bytes())
        return
    url = urlparse(settings.smtp_url)
    port = url.port or (465 if url.scheme == "smtps" else 25)
    try:
        if url.scheme == "smtps":
            with smtplib.SMTP_SSL(url.hostname or "localhost", port, timeout=30,
                                  context=ssl.create_default_context()) as smtp:
                _login_and_send(smtp, url, msg)
        else:
            with smtplib.SMTP(url.hostname or "localhost", port, timeout=30) as smtp:
                _login_and_send(smtp, url, msg)
    except (OSError, smtplib.SMTPException):
        # A notice that cannot be sent must not break the action it reports.
        log.exception("could not send a notice")


def _login_and_send(smtp: smtplib.SMTP, url: object, msg: EmailMessage) -> None:
    user = getattr(url, "username", None)
    if user:
        smtp.login(unquote(user), unquote(getattr(url, "password", "") or ""))
    smtp.send_message(msg)
