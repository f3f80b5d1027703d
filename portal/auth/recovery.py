"""Second-factor recovery codes: ten, shown once, hashed, single use."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..models import RecoveryCode, utcnow

ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
COUNT = 10


def _hash(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").strip().lower().encode()).hexdigest()


def regenerate(db: Session, kind: str, account_id: int) -> list[str]:
    """Replace every code of the account; returns the new ones (show them once)."""
    db.execute(delete(RecoveryCode).where(RecoveryCode.kind == kind,
                                          RecoveryCode.account_id == account_id))
    codes = []
    for _ in range(COUNT):
        raw = "".join(secrets.choice(ALPHABET) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
        db.add(RecoveryCode(kind=kind, account_id=account_id, code_hash=_hash(codes[-1])))
    return codes


def consume(db: Session, kind: str, account_id: int, code: str) -> bool:
    digest = _hash(code or "")
    for row in db.execute(select(RecoveryCode).where(
            RecoveryCode.kind == kind, RecoveryCode.account_id == account_id,
            RecoveryCode.used_at.is_(None))).scalars():
        if hmac.compare_digest(row.code_hash, digest):
            row.used_at = utcnow()
            return True
    return False


def remaining(db: Session, kind: str, account_id: int) -> int:
    return len(db.execute(select(RecoveryCode.id).where(
        RecoveryCode.kind == kind, RecoveryCode.account_id == account_id,
        RecoveryCode.used_at.is_(None))).all())


def clear(db: Session, kind: str, account_id: int) -> None:
    db.execute(delete(RecoveryCode).where(RecoveryCode.kind == kind,
                                          RecoveryCode.account_id == account_id))
