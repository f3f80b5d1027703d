"""API bearer tokens: random, shown once, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select

from ..auth.principal import Principal
from ..models import ApiToken, ClientUser, utcnow
from ..services import Services

PREFIX = "knk_"


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
    with services.sessions() as db, db.begin():
        row = db.execute(select(ApiToken).where(ApiToken.token_hash == digest)).scalar_one_or_none()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
                row.token_hash, digest):
            return None
        user = db.get(ClientUser, row.user_id)
        if user is None or not user.active:
            return None
        row.last_used_at = utcnow()
        return Principal("client", user.id, user.login, user.display_name, user.session_epoch,
                         company_id=user.company_id)
