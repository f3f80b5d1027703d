"""The audit log refuses details that look like a My Number, and only those:
generated hex ids, alone or in a list (the uploads a protected file opened
into), hold 12-digit runs by chance and must still be recorded."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit import SYSTEM, AuditError, Tag, record
from portal.db import make_engine
from portal.instance import migrate
from portal.models import AuditEvent
from portal.settings import Settings

KEY = b"k" * 32
NUMBER = "123456789018"  # 12 digits (whether the check digit fits does not matter)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Session]:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    migrate(settings)
    with Session(make_engine(settings.database_url)) as session:
        yield session


def unlucky_id() -> str:
    """A 32-digit hex id with a run of exactly 12 decimal digits, as new ids have
    about once in 80."""
    digits = "".join(secrets.choice("0123456789") for _ in range(12))
    return "a" + digits + "b" + secrets.token_hex(9)


def events(db: Session) -> int:
    return db.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


@pytest.mark.parametrize("details", [
    {"opened_into": [secrets.token_hex(16), "PLACEHOLDER"], "files": 2},
    {"upload": "PLACEHOLDER"},
    {"opened_into": ("PLACEHOLDER",)},
])
def test_generated_ids_with_digit_runs_are_recorded(db: Session, details: dict) -> None:
    bad = unlucky_id()
    filled = {k: ([bad if x == "PLACEHOLDER" else x for x in v] if isinstance(v, (list, tuple))
                  else bad if v == "PLACEHOLDER" else v) for k, v in details.items()}
    with db.begin():
        record(db, KEY, Tag.UPLOAD_OPENED, SYSTEM, details=filled)
    assert events(db) == 1


@pytest.mark.parametrize("details", [
    {"reason": NUMBER},
    {"reason": f"row {NUMBER[:4]}-{NUMBER[4:8]}-{NUMBER[8:]}"},
    {"files": [secrets.token_hex(16), f"name {NUMBER}.csv"]},
    {"files": (NUMBER,)},
    {"nested": {"deeper": NUMBER}},
])
def test_number_shaped_details_are_refused(db: Session, details: dict) -> None:
    with pytest.raises(AuditError), db.begin():
        record(db, KEY, Tag.UPLOAD_OPENED, SYSTEM, details=details)
    assert events(db) == 0
