"""Read-only sessions on SQLite: a snapshot without the write lock, and SELECT only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import exc, select, text

from portal.db import ReadOnlyError, make_engine, make_read_sessionmaker, make_sessionmaker


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "k.db"
    engine = make_engine(f"sqlite:///{path}")
    with make_sessionmaker(engine)() as db, db.begin():
        db.execute(text("CREATE TABLE t (x INTEGER)"))
        db.execute(text("INSERT INTO t VALUES (1)"))
    engine.dispose()
    return path


def test_a_read_does_not_wait_for_a_writer_and_a_write_does(db_path: Path) -> None:
    engine = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=200)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    holder.execute("INSERT INTO t VALUES (2)")
    try:
        with make_read_sessionmaker(engine)() as db:
            # The snapshot: what was committed, at once, despite the lock.
            assert db.execute(select(text("count(*)")).select_from(text("t"))).scalar() == 1
        with pytest.raises(exc.OperationalError, match="locked"):
            with make_sessionmaker(engine)() as db, db.begin():
                db.execute(select(text("x")).select_from(text("t"))).all()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()


@pytest.mark.parametrize("statement", ["INSERT INTO t VALUES (3)", "UPDATE t SET x = 5",
                                       "DELETE FROM t", "  update t set x = 5"])
def test_a_read_session_refuses_to_write(db_path: Path, statement: str) -> None:
    engine = make_engine(f"sqlite:///{db_path}")
    with make_read_sessionmaker(engine)() as db:
        with pytest.raises(ReadOnlyError):
            db.execute(text(statement))
    with make_sessionmaker(engine)() as db:
        assert db.execute(text("SELECT x FROM t")).scalars().all() == [1]
    engine.dispose()
