"""Server-side sessions.

The Flask session cookie (signed, ``__Host-``) carries only a random token;
the row it names decides whether the session is alive.  So logout, "end my
other sessions", disabling an account and the idle and absolute limits all
take effect on the server, whatever a client replays.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..models import WebSession, utcnow
from ..models.base import aware_utc

TOUCH_EVERY = timedelta(seconds=30)  # bound the writes an active page causes


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(db: Session, kind: str, account_id: int, *, remote_addr: str | None,
          user_agent: str, absolute: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    db.add(WebSession(id=_digest(token), kind=kind, account_id=account_id, created_at=now,
                      last_seen_at=now, expires_at=now + absolute, remote_addr=remote_addr,
                      user_agent=(user_agent or "")[:200]))
    return token


def resolve(db: Session, token: str, kind: str, idle: timedelta) -> WebSession | None:
    """The live session for ``token``, touched; None if unknown, ended or expired."""
    row = db.get(WebSession, _digest(token)) if token else None
    now = utcnow()
    if row is None or row.kind != kind or row.revoked_at is not None:
        return None
    if aware_utc(row.expires_at) <= now or aware_utc(row.last_seen_at) + idle <= now:
        row.revoked_at = now
        return None
    if now - aware_utc(row.last_seen_at) >= TOUCH_EVERY:
        row.last_seen_at = now
    return row


def end(db: Session, token: str) -> None:
    row = db.get(WebSession, _digest(token)) if token else None
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()


def end_all(db: Session, kind: str, account_id: int, *, except_token: str | None = None) -> int:
    query = update(WebSession).where(WebSession.kind == kind,
                                     WebSession.account_id == account_id,
                                     WebSession.revoked_at.is_(None))
    if except_token:
        query = query.where(WebSession.id != _digest(except_token))
    result = db.execute(query.values(revoked_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def active(db: Session, kind: str, account_id: int) -> list[WebSession]:
    now = utcnow()
    rows = db.execute(select(WebSession).where(
        WebSession.kind == kind, WebSession.account_id == account_id,
        WebSession.revoked_at.is_(None)).order_by(WebSession.last_seen_at.desc())).scalars()
    return [r for r in rows if aware_utc(r.expires_at) > now]


def is_current(row: WebSession, token: str) -> bool:
    return row.id == _digest(token)
