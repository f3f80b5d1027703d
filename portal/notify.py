"""Notices by e-mail: SMTP when KINKO_SMTP_URL is set, else an outbox folder.

A notice never carries a file name, a number or a secret: only which
company, how many, and what kind of event.

Transport rules:

* ``smtps://host[:465]``: TLS from the first byte (certificate verified);
* ``smtp://host[:25]``: STARTTLS whenever the server offers it (certificate
  verified); without it the message goes in the clear, but credentials in
  the URL are then only sent to a loopback server;
* every connection has a timeout, and neither the body nor the credentials
  are ever logged.

Without ``KINKO_SMTP_URL`` each notice is written as one ``.eml`` file
(0600) to ``KINKO_HOME/outbox``; the office console lists them
(``portal.office.outbox``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import smtplib
import ssl
import string
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 30.0


def outbox_dir(settings: Settings) -> Path:
    return settings.home / "outbox"


def build_message(settings: Settings, to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    domain = settings.mail_from.rpartition("@")[2] or "localhost"
    # Letters only: make_msgid() puts a long run of digits (a timestamp) in
    # the header, which looks like a My Number to a data-loss filter.
    local = "".join(secrets.choice(string.ascii_lowercase) for _ in range(24))
    msg["Message-ID"] = f"<{local}@{domain}>"
    msg.set_content(body)
    return msg


def send(settings: Settings, to: str | None, subject: str, body: str) -> bool:
    """Send one notice; True when it was handed over (SMTP) or written (outbox).

    A notice that cannot be sent must not break the action it reports: any
    failure is logged (without the body) and False is returned.
    """
    if not to:
        return False
    msg = build_message(settings, to, subject, body)
    if settings.smtp_url is None:
        try:
            _write_outbox(outbox_dir(settings), msg)
        except OSError:
            log.exception("could not write a notice to the outbox")
            return False
        return True
    try:
        _send_smtp(settings.smtp_url, msg)
    except (OSError, smtplib.SMTPException, SettingsError) as exc:
        # The exception names the server's reply, never the message body.
        log.error("could not send a notice by SMTP: %s: %s", type(exc).__name__,
                  str(exc)[:200])
        return False
    return True


def _write_outbox(outbox: Path, msg: EmailMessage) -> Path:
    outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.now(UTC)
    name = f"{now.strftime('%Y%m%dT%H%M%S-%f')}-{secrets.token_hex(4)}.eml"
    path = outbox / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(msg.as_bytes())
    return path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _send_smtp(smtp_url: str, msg: EmailMessage) -> None:
    url = urlsplit(smtp_url)
    if url.scheme not in ("smtp", "smtps"):
        raise SettingsError(f"unsupported KINKO_SMTP_URL scheme: {url.scheme!r}")
    host = url.hostname or "localhost"
    context = ssl.create_default_context()
    if url.scheme == "smtps":
        with smtplib.SMTP_SSL(host, url.port or 465, timeout=SMTP_TIMEOUT,
                              context=context) as smtp:
            _login_and_send(smtp, url, msg, secure=True)
        return
    with smtplib.SMTP(host, url.port or 25, timeout=SMTP_TIMEOUT) as smtp:
        smtp.ehlo()
        secure = False
        if smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
            secure = True
        _login_and_send(smtp, url, msg, secure=secure or _is_loopback(host))


def _login_and_send(smtp: smtplib.SMTP, url: SplitResult, msg: EmailMessage, *,
                    secure: bool) -> None:
    if url.username:
        if not secure:
            raise smtplib.SMTPException(
                "the SMTP server offers no STARTTLS: credentials not sent")
        smtp.login(unquote(url.username), unquote(url.password or ""))
    smtp.send_message(msg)
