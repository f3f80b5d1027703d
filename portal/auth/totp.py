"""TOTP (RFC 6238) with single use of each code.

The last accepted time step is stored on the account row and compared in
the same transaction, so a code is accepted once even when two app
processes see it at the same time.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pyotp
from sqlalchemy import CursorResult, or_, update
from sqlalchemy.orm import Session


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step (±1 for drift) that ``code`` is valid for, or None."""
    code = (code or "").strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if now is None else now
    step = int(now // totp.interval)
    for candidate in (step, step - 1, step + 1):
        if pyotp.utils.strings_equal(totp.generate_otp(candidate), code):
            return candidate
    return None


def consume(db: Session, model: Any, account_id: int, secret: str, code: str) -> bool:
    """Accept ``code`` once: atomically move the account's last step forward."""
    step = matching_step(secret, code)
    if step is None:
        return False
    done = cast(CursorResult[Any], db.execute(
        update(model)
        .where(model.id == account_id,
               or_(model.totp_last_step.is_(None), model.totp_last_step < step))
        .values(totp_last_step=step)
    )).rowcount
    return bool(done)
