"""PostgreSQL (scale profile): the application role cannot rewrite the
handling log, tampering by the owner is still found, the schema matches the
models, and times do not depend on the server's time zone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal.db import make_engine
from portal.models import Base

from .harness import Stack, scale_only

pytestmark = scale_only("PostgreSQL roles and triggers exist only on the scale profile")


def _pg(stack: Stack) -> Any:
    return stack.services["pg"]


@pytest.mark.parametrize("statement", [
    "UPDATE audit_events SET remote_addr = '203.0.113.9' "
    "WHERE id = (SELECT max(id) FROM audit_events)",
    "DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)",
    "TRUNCATE audit_events",
])
def test_the_app_role_cannot_rewrite_the_log(stack: Stack, statement: str) -> None:
    with psycopg.connect(_pg(stack).url()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("kinko_app",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    # ... while it can append (every test above did) and read.
    with psycopg.connect(_pg(stack).url()) as conn:
        (count,) = conn.execute("SELECT count(*) FROM audit_events").fetchone()
        assert count > 0


def test_the_trigger_stops_the_owner_too(stack: Stack) -> None:
    with psycopg.connect(_pg(stack).admin_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("DELETE FROM audit_events WHERE id = (SELECT min(id) FROM audit_events)")


@pytest.fixture
def log_copy(stack: Stack, tmp_path: Any) -> Iterator[str]:
    """A restored copy of the live database (pg_dump → pg_restore), to tamper with."""
    for _ in range(12):  # enough events to tamper in the middle of
        stack.kinko("token", "add", "acme", "hr")
    pg = _pg(stack)
    dump = tmp_path / "kinko.dump"
    pg.dump(dump)
    name = f"tamper_{tmp_path.name[-20:].replace('-', '_').lower()}"
    pg.psql(f"CREATE DATABASE {name} OWNER kinko_owner")
    restore = subprocess.run([pg.tool("pg_restore"), "--no-owner", "--role=kinko_owner",
                              "-d", pg.url("kinko_owner", "owner-Passw0rd", name), str(dump)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert restore.returncode == 0, restore.stderr[-2000:]
    try:
        yield name
    finally:
        pg.psql(f"DROP DATABASE {name} WITH (FORCE)")


def _verify(stack: Stack, db: str | None = None) -> tuple[int, str]:
    """`kinko audit verify` on database ``db`` (as the owner), or the live one."""
    env = stack.env
    if db is not None:
        env = dict(env, KINKO_DATABASE_URL=_pg(stack).url("kinko_owner", "owner-Passw0rd", db))
    r = stack.kinko("audit", "verify", env=env, check=False)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("tamper", ["none", "edit", "delete", "insert", "reorder"])
def test_owner_tampering_is_found(stack: Stack, log_copy: str, tamper: str) -> None:
    """Someone with the owner's rights switches the trigger off and rewrites
    history: the hash chain still shows where."""
    url = _pg(stack).url("kinko_owner", "owner-Passw0rd", log_copy)
    with psycopg.connect(url) as c:
        c.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
        lo, hi = c.execute("SELECT min(id), max(id) FROM audit_events").fetchone()
        assert hi - lo > 10
        k = (lo + hi) // 2
        cols = [r[0] for r in c.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = "
            "'audit_events' AND column_name <> 'id' ORDER BY ordinal_position")]
        select = f"SELECT {', '.join(cols)} FROM audit_events WHERE id = %s"
        if tamper == "edit":
            c.execute("UPDATE audit_events SET remote_addr = '203.0.113.9' WHERE id = %s", (k,))
        elif tamper == "delete":
            c.execute("DELETE FROM audit_events WHERE id = %s", (k,))
        elif tamper == "insert":
            row = dict(zip(cols, c.execute(select, (k,)).fetchone(), strict=True))
            c.execute("UPDATE audit_events SET id = id + 1000000 WHERE id >= %s", (k,))
            row.update(id=k, action="office:file:downloaded", hash="f" * 64)
            names = ", ".join(row)
            c.execute(f"INSERT INTO audit_events ({names}) VALUES "  # noqa: S608
                      f"({', '.join(['%s'] * len(row))})", tuple(row.values()))
        elif tamper == "reorder":  # swap two neighbours, each keeping its own hash
            a = c.execute(select, (k,)).fetchone()
            b = c.execute(select, (k + 1,)).fetchone()
            sets = ", ".join(f"{col} = %s" for col in cols)
            c.execute("UPDATE audit_events SET hash = 'swapping' WHERE id = %s", (k,))
            c.execute(f"UPDATE audit_events SET {sets} WHERE id = %s", (*a, k + 1))  # noqa: S608
            c.execute(f"UPDATE audit_events SET {sets} WHERE id = %s", (*b, k))  # noqa: S608
    code, out = _verify(stack, log_copy)
    if tamper == "none":
        assert code == 0 and "intact" in out, out
    else:
        assert code != 0, out
        assert "broken at event" in out and len(out.strip().splitlines()) == 1


def test_alembic_head_matches_the_models_on_postgres(stack: Stack) -> None:
    engine = make_engine(_pg(stack).admin_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], diff


def test_times_are_utc_whatever_the_server_zone(stack: Stack, acme_token: str) -> None:
    """The server runs with TimeZone=Asia/Tokyo (tests/pgserver.py); kinko's
    connections use UTC, so a fresh upload's time is now, not 9 hours off."""
    import time

    with psycopg.connect(_pg(stack).url()) as conn:
        assert conn.execute("SHOW timezone").fetchone() == ("Asia/Tokyo",)
    before = time.time()
    up = stack.api_upload(acme_token, b"a,b\n1,2\n", "zone.csv").json()
    body = stack.status(acme_token, up["id"])
    from datetime import datetime
    at = datetime.fromisoformat(body["events"][0]["at"]).timestamp()
    assert abs(at - before) < 120, (body["events"][0]["at"], before)
    code, out = _verify(stack)
    assert code == 0, out
