"""API bearer tokens: random, shown once, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ..auth.principal import Principal
from ..auth.sessions import TOUCH_EVERY
from ..models import ApiToken, ClientUser, utcnow
from ..models.base import aware_utc
from ..services import Services

PREFIX = "knk_"
LABEL_MAX = 100  # the column's length


def new_token() -> tuple[str, str]:
    """(token to show once, hash to store)."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def principal_from_bearer(services: Services, header: str) -> Principal | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(PREFIX):
        return None
    digest = hash_token(token.strip())
    # Read without the write lock: a script polling its uploads must not queue
    # behind (or hold up) the writers.  "Last used" is written at most every
    # TOUCH_EVERY, as a web session's "last seen" is.
    now = utcnow()
    with services.reader() as db:
        row = db.execute(select(ApiToken).where(ApiToken.token_hash == digest)).scalar_one_or_none()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
                row.token_hash, digest):
            return None
        user = db.get(ClientUser, row.user_id)
        # A locked account is refused here too, as the session loader refuses it.
        if user is None or not user.active or user.locked_at is not None:
            return None
        token_id, last = row.id, row.last_used_at
        # An account whose initial password was never changed is not yet in
        # its owner's hands: its tokens answer 403 password_change_required.
        principal = Principal("client", user.id, user.login, user.display_name,
                              user.session_epoch, company_id=user.company_id,
                              must_change=user.must_change_password)
    if last is None or now - aware_utc(last) >= TOUCH_EVERY:
        with services.sessions() as db, db.begin():
            db.execute(update(ApiToken).where(
                ApiToken.id == token_id, or_(ApiToken.last_used_at.is_(None),
                                             ApiToken.last_used_at < now - TOUCH_EVERY))
                .values(last_used_at=now))
    return principal


def create(db: Session, user_id: int, label: str) -> tuple[ApiToken, str]:
    """A new token row for ``user_id`` (flushed, so it has an id) and the
    token itself, to be shown once and never stored."""
    token, digest = new_token()
    row = ApiToken(user_id=user_id, token_hash=digest, label=label[:LABEL_MAX])
    db.add(row)
    db.flush()
    return row, token


def of_user(db: Session, user_id: int) -> list[ApiToken]:
    """The user's tokens, active first, newest first."""
    return list(db.execute(
        select(ApiToken).where(ApiToken.user_id == user_id)
        .order_by(ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc(),
                  ApiToken.id.desc())).scalars())


def owned(db: Session, user_id: int, token_id: int) -> ApiToken | None:
    """The token ``token_id`` if it belongs to ``user_id``; else None (the
    caller answers 404 whether it exists for someone else or not at all)."""
    if not 0 < token_id < 2 ** 63:
        return None
    row = db.get(ApiToken, token_id)
    return row if row is not None and row.user_id == user_id else None


def revoke(row: ApiToken) -> bool:
    """Revoke now; False if it already was.  The bearer check reads
    ``revoked_at`` on every request, so the token stops working at once."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True
