"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, on a free port.

Every message it receives is kept (parsed) in ``server.messages``::

    with SmtpServer() as smtp:
        env["KINKO_SMTP_URL"] = smtp.url
        ...
        assert smtp.wait_for(1)[0]["Subject"] == ...

or use the ``smtp_server`` fixture (import it into a conftest or test module).
"""

from __future__ import annotations

import email
import socket
import threading
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        msg = cast(EmailMessage, email.message_from_bytes(envelope.content,
                                                          policy=policy.default))
        with self.server.lock:
            self.server.messages.append(msg)
            self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SmtpServer:
    """Start on ``__enter__`` (or :meth:`start`), stop on ``__exit__``."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        self.port = _free_port()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.envelopes.clear()

    def wait_for(self, count: int, timeout: float = 10) -> list[EmailMessage]:
        """At least ``count`` messages (a copy of the list), or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} messages received, "
                                     f"wanted {count}")
            time.sleep(0.05)


def text_of(msg: EmailMessage) -> str:
    """Subject and plain-text body of one received message."""
    part = msg.get_body(preferencelist=("plain",))
    body = part.get_content() if isinstance(part, EmailMessage) else ""
    return f"{msg['Subject']}\n{body}".replace("\r\n", "\n")


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server
