"""Throttling and lockout, shared by every app process through the database.

Per account: after ``SLOW_AFTER`` consecutive failures each further attempt
must wait (doubling up to a minute); at ``LOCK_AFTER`` the account locks
until a manager unlocks it.  Per address: more than ``ADDRESS_LIMIT``
failures in ``ADDRESS_WINDOW`` refuse that address for the rest of the
window.  A successful sign-in clears the account's counter.  Another
account is never affected by these counters.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from ..models import AddressFailure, utcnow
from ..models.base import aware_utc

SLOW_AFTER = 5
LOCK_AFTER = 10
MAX_DELAY_S = 60
ADDRESS_LIMIT = 50
ADDRESS_WINDOW = timedelta(minutes=15)


def address_blocked(db: Session, addr: str | None) -> bool:
    row = db.get(AddressFailure, addr or "-")
    if row is None:
        return False
    return aware_utc(row.window_start) + ADDRESS_WINDOW > utcnow() and row.count >= ADDRESS_LIMIT


def account_state(account: Any) -> str:
    """``ok``, ``throttled`` (must wait) or ``locked`` (a manager must unlock)."""
    if account.locked_at is not None:
        return "locked"
    until = account.throttled_until
    if until is not None and aware_utc(until) > utcnow():
        return "throttled"
    return "ok"


def record_failure(db: Session, account: Any | None, addr: str | None) -> str | None:
    """Count a failure.  Returns "locked" when this failure locked the account."""
    now = utcnow()
    row = db.get(AddressFailure, addr or "-")
    if row is None:
        row = AddressFailure(addr=addr or "-", window_start=now, count=0)
        db.add(row)
    if row.window_start is None or aware_utc(row.window_start) + ADDRESS_WINDOW <= now:
        row.window_start, row.count = now, 0
    row.count += 1
    if account is None:
        return None
    account.failed_logins = (account.failed_logins or 0) + 1
    if account.failed_logins >= LOCK_AFTER and account.locked_at is None:
        account.locked_at = now
        return "locked"
    if account.failed_logins >= SLOW_AFTER:
        delay = min(MAX_DELAY_S, 2 ** (account.failed_logins - SLOW_AFTER))
        account.throttled_until = now + timedelta(seconds=delay)
    return None


def record_success(account: Any) -> None:
    account.failed_logins = 0
    account.throttled_until = None


def unlock(account: Any) -> None:
    account.locked_at = None
    account.failed_logins = 0
    account.throttled_until = None
