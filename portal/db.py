"""Database engine and sessions (SQLAlchemy 2).

SQLite is the embedded default.  It is put in WAL mode with a busy timeout,
and every transaction starts with ``BEGIN IMMEDIATE`` so that writers are
serialised up front: the audit hash chain reads the previous event and
appends the next one in one transaction, and a deferred transaction could
otherwise let two processes fork the chain.

Work that only reads (status polls, list pages, the worker's checks) uses
:func:`make_read_sessionmaker`: a plain ``BEGIN``, which in WAL mode reads a
snapshot and takes no lock, so it neither waits for a writer nor makes one
wait.  Such a session refuses any statement but a ``SELECT`` (on every
database), so a write cannot slip into a transaction that did not lock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 15000
READ_ONLY = "kinko_read_only"  # execution option of make_read_sessionmaker's engine


class ReadOnlyError(RuntimeError):
    """A read-only session was asked to change something (a bug)."""


def make_engine(url: str, *, foreign_keys: bool = True,
                busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """``foreign_keys=False`` only for migrations: SQLite batch mode rebuilds
    tables, which a referenced table's foreign keys would otherwise refuse.
    ``busy_timeout_ms`` (``KINKO_DB_BUSY_TIMEOUT_MS``): how long SQLite waits
    for a lock before "database is locked" (a 503 in the apps)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout_ms / 1000},
            hide_parameters=True, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide where transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    url = postgres_url(url)
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # Every timestamp is stored and compared in UTC; the server's or the
        # role's TimeZone setting must not shift naive values (portal.audit
        # hashes naive UTC times, and views convert to JST themselves).
        connect_args["options"] = "-c timezone=UTC"
    # hide_parameters: SQL errors must not echo values (file names) into logs.
    return create_engine(url, pool_pre_ping=True, hide_parameters=True,
                         connect_args=connect_args, **kwargs)


def postgres_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the installed driver)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reading only (see the module doc); same pool as the others."""
    reads = engine.execution_options(**{READ_ONLY: True})

    # Listeners on this option engine fire for its connections only: the
    # writers' statements pay nothing for the guard.
    @event.listens_for(reads, "before_cursor_execute")
    def _only_select(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip()[:6].upper() not in ("SELECT", "BEGIN"):
            raise ReadOnlyError("a read-only session may only SELECT")

    return sessionmaker(reads, expire_on_commit=False)
