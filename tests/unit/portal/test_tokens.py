"""API bearer tokens: checked without the write lock, "last used" written sparingly."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from portal.auth.sessions import TOUCH_EVERY
from portal.client import tokens
from portal.instance import init_instance
from portal.models import ApiToken, ClientUser, Company, utcnow
from portal.services import build_services
from portal.settings import Settings


def test_last_used_is_written_at_most_every_touch_interval(tmp_path: Path) -> None:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    init_instance(settings)
    svc = build_services(settings, "client")
    with svc.sessions() as db, db.begin():
        company = Company(code="acme", name="Acme")
        db.add(company)
        db.flush()
        user = ClientUser(company_id=company.id, login="hr", password_hash="x",
                          must_change_password=False)
        db.add(user)
        db.flush()
        row, token = tokens.create(db, user.id, "script")
        token_id = row.id

    def last_used() -> object:
        with svc.sessions() as db:
            return db.get(ApiToken, token_id).last_used_at  # type: ignore[union-attr]

    principal = tokens.principal_from_bearer(svc, f"Bearer {token}")
    assert principal is not None and principal.login == "hr"
    first = last_used()
    assert first is not None
    assert tokens.principal_from_bearer(svc, f"Bearer {token}") is not None
    assert last_used() == first  # within TOUCH_EVERY: no write
    with svc.sessions() as db, db.begin():
        stale = utcnow() - TOUCH_EVERY - timedelta(seconds=1)
        db.get(ApiToken, token_id).last_used_at = stale  # type: ignore[union-attr]
    assert tokens.principal_from_bearer(svc, f"Bearer {token}") is not None
    assert last_used() != first and last_used() is not None
    assert tokens.principal_from_bearer(svc, "Bearer knk_wrong") is None
    with svc.sessions() as db, db.begin():
        db.get(ApiToken, token_id).revoked_at = utcnow()  # type: ignore[union-attr]
    assert tokens.principal_from_bearer(svc, f"Bearer {token}") is None
