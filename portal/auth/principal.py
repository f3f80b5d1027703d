"""The logged-in principal as Flask-Login sees it.

The session stores ``<id>:<epoch>``; bumping the account's ``session_epoch``
(logout everywhere, disabling the account) ends its sessions server-side.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_login import UserMixin


@dataclass
class Principal(UserMixin):
    kind: str  # "client" | "staff"
    id: int
    login: str
    display_name: str
    epoch: int
    company_id: int | None = None
    role: str | None = None
    sid: str = ""  # the server-side session token (the cookie holds only this)
    must_change: bool = False  # initial or expired password: nothing else until changed

    def get_id(self) -> str:
        return self.sid

    @property
    def label(self) -> str:
        return self.display_name or self.login


def parse_session_id(value: str) -> tuple[int, int] | None:
    try:
        ident, epoch = value.split(":", 1)
        return int(ident), int(epoch)
    except ValueError:
        return None
