"""The password policy: the office's own rules by default, editable by the manager.

Default (the office's written policy): at least 8 characters, letters and
digits mixed, changed every 60 days; plus the last 5 not reused, at most
128 characters, and no password from a list of 30,000 common ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from ..models import Policy, utcnow
from .passwords import verify_password

KEY = "password_policy"


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 8
    max_length: int = 128
    letters_and_digits: bool = True
    expiry_days: int = 60  # 0: passwords never expire
    history: int = 5  # how many previous passwords may not be reused
    refuse_common: bool = True

    def validated(self) -> PasswordPolicy:
        if not (8 <= self.min_length <= self.max_length <= 1024):
            raise ValueError("8 <= min_length <= max_length <= 1024")
        if not (0 <= self.expiry_days <= 3650 and 0 <= self.history <= 50):
            raise ValueError("expiry_days 0..3650, history 0..50")
        return self

    def is_expired(self, changed_at: datetime | None, now: datetime | None = None) -> bool:
        if self.expiry_days == 0 or changed_at is None:
            return False
        if changed_at.tzinfo is None:
            changed_at = changed_at.replace(tzinfo=UTC)
        return (now or utcnow()) - changed_at > timedelta(days=self.expiry_days)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """zxcvbn's list of the 30,000 most common passwords."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS
    return frozenset(FREQUENCY_LISTS["passwords"])


def load_policy(db: Session) -> PasswordPolicy:
    row = db.get(Policy, KEY)
    if row is None:
        return PasswordPolicy()
    data = json.loads(row.value)
    known = {f.name for f in fields(PasswordPolicy)}
    return replace(PasswordPolicy(), **{k: v for k, v in data.items() if k in known})


def save_policy(db: Session, policy: PasswordPolicy) -> None:
    policy.validated()
    row = db.get(Policy, KEY) or Policy(key=KEY)
    row.value = json.dumps(asdict(policy))
    db.add(row)


def problems(policy: PasswordPolicy, password: str, *, login: str = "",
             previous_hashes: list[str] | None = None) -> list[str]:
    """Codes of every rule ``password`` breaks (empty: acceptable)."""
    out: list[str] = []
    if len(password) < policy.min_length:
        out.append("too_short")
    if len(password) > policy.max_length:
        out.append("too_long")
    if policy.letters_and_digits and not (
            any(c.isdigit() for c in password) and any(c.isalpha() for c in password)):
        out.append("letters_digits")
    lowered = password.lower()
    if policy.refuse_common and (lowered in common_passwords()
                                 or lowered.rstrip("0123456789!") in common_passwords()):
        out.append("common")
    if login and login.lower() in lowered:
        out.append("contains_login")
    if len(password) <= policy.max_length:
        for stored in (previous_hashes or [])[: policy.history]:
            if verify_password(stored, password):
                out.append("reused")
                break
    return out


def as_dict(policy: PasswordPolicy) -> dict[str, Any]:
    return asdict(policy)
