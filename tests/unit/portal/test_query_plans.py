"""The pages that grow with the instance use indexes and LIMIT, never a sort or a
full scan of every row (SQLite's EXPLAIN QUERY PLAN, on a schema made by the
migrations).  bench/growth.py measures the same pages with 10,000 uploads and
1,000,000 events; this test only looks at the plans, never at a time.

The plans are taken from the real query builders of the pages (``log_page``,
``inbox_page`` and the room's query): every SELECT they run is explained, on
the same connection and with the same parameters, just before it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from portal.db import make_engine
from portal.instance import migrate
from portal.models import AuditEvent, Company, Staff, Upload
from portal.office import auditlog
from portal.office.auditlog import LogFilters, log_page
from portal.office.views import InboxFilters, inbox_page
from portal.settings import Settings

WEEK = {"day_from": date(2026, 1, 5), "day_to": date(2026, 1, 11)}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    home: Path = tmp_path_factory.mktemp("plans")
    settings = Settings.from_env({"KINKO_HOME": str(home)})
    migrate(settings)
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


class Plans:
    """Collects (sql, plan lines) of every SELECT run while it is active."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seen: list[tuple[str, list[str]]] = []

    def _explain(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                 context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            self.seen.append((statement, [str(row[3]) for row in cursor.fetchall()]))

    def __enter__(self) -> Plans:
        event.listen(self.engine, "before_cursor_execute", self._explain)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._explain)

    def on(self, table: str) -> list[tuple[str, list[str]]]:
        return [(sql, plan) for sql, plan in self.seen
                if f"FROM {table}" in sql.replace("\n", " ")]


def _full_scans(plan: list[str], table: str) -> list[str]:
    # "SCAN t" reads every row; "SCAN t USING [COVERING] INDEX" reads every index
    # entry.  "SEARCH t USING INDEX (...)" reads only the matching range.
    return [line for line in plan if line.startswith(f"SCAN {table}")]


def _sorts(plan: list[str]) -> list[str]:
    return [line for line in plan if "TEMP B-TREE FOR ORDER BY" in line]


@pytest.fixture(scope="module")
def company(engine: Engine) -> Company:
    with Session(engine) as db:
        co = Company(code="plans", name="Plans")
        db.add(co)
        db.commit()
        db.refresh(co)
        db.expunge(co)
        return co


@pytest.fixture(scope="module")
def logged(engine: Engine) -> None:
    """A few events under the searched actions (rows only: the plans need no chain),
    so that every step of the action search runs.  SQLite plans without ANALYZE do
    not depend on the data."""
    with Session(engine) as db:
        for i, action in enumerate(["office:file:vaulted", "client:upload:received",
                                    "office:file:downloaded", "client:upload:received",
                                    "office:file:vaulted", "office:session:login"]):
            db.add(AuditEvent(action=action, actor_kind="system", prev_hash="0" * 64,
                              hash=f"{i:064x}"))
        db.commit()


SEARCHES = {
    "company": lambda co: LogFilters(company=co),
    "company+week": lambda co: LogFilters(company=co, **WEEK),
    "week": lambda co: LogFilters(**WEEK),
    "action prefix": lambda co: LogFilters(action="office:file:"),
    "action tag": lambda co: LogFilters(action="client:upload:received"),
    "actor kind:id": lambda co: LogFilters(actor="staff:1"),
    "actor login": lambda co: LogFilters(actor="boss"),
    "upload": lambda co: LogFilters(upload="0123456789abcdef0123456789abcdef"),
    "address": lambda co: LogFilters(addr="192.0.2.7"),
    "company+action+week": lambda co: LogFilters(company=co, action="office:", **WEEK),
}


# Searched by action alone, the page is found action by action (see below).
ACTION_ONLY = {"action prefix", "action tag"}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_audit_search_uses_an_index_and_a_limit(engine: Engine, company: Company,
                                                logged: None, name: str) -> None:
    with Session(engine) as db, Plans(engine) as plans:
        log_page(db, SEARCHES[name](company), 1)
    queries = plans.on("audit_events")
    if name not in ACTION_ONLY:
        assert len(queries) == 2, queries  # the count and the page
    for sql, plan in queries:
        assert plan, sql
        assert _full_scans(plan, "audit_events") == [], (name, sql, plan)
        assert all(line.startswith("SEARCH audit_events USING") for line in plan
                   if "audit_events" in line), (name, plan)
    page_sql = queries[-1][0] if name not in ACTION_ONLY else queries[-2][0]
    assert "LIMIT" in page_sql and "ORDER BY audit_events.id DESC" in page_sql


@pytest.mark.parametrize("name", sorted(ACTION_ONLY))
def test_action_search_pages_from_the_index_without_a_sort(engine: Engine, company: Company,
                                                           logged: None, name: str) -> None:
    """A prefix spans several actions: ``ORDER BY id DESC LIMIT`` over its range of
    ix_audit_action made SQLite read and sort every match (130,000 rows of a million
    in bench/growth.py).  Now: the count reads the covering index (up to its cap);
    each action under the prefix is found by one seek and read newest first from
    (action, id) with LIMIT; the page's rows are loaded by primary key.  No sort
    anywhere."""
    with Session(engine) as db, Plans(engine) as plans:
        page = log_page(db, SEARCHES[name](company), 1, size=2)
    assert len(page.items) == 2  # the data below makes every step run
    queries = plans.on("audit_events")
    for sql, plan in queries:
        assert _sorts(plan) == [], (name, sql, plan)
        assert _full_scans(plan, "audit_events") == [], (name, sql, plan)
    count_sql, count_plan = queries[0]
    # The count reads the covering index and stops after COUNT_CAP + 1 matches.
    assert count_plan == ["CO-ROUTINE anon_1",
                          "SEARCH audit_events USING COVERING INDEX ix_audit_action "
                          "(action>? AND action<?)", "SCAN anon_1"], count_plan
    assert "LIMIT" in count_sql
    arms = [(sql, plan) for sql, plan in queries[1:-1] if "LIMIT" in sql
            and "ORDER BY audit_events.id DESC" in sql]
    seeks = [(sql, plan) for sql, plan in queries[1:-1] if (sql, plan) not in arms]
    assert len(arms) == (2 if name == "action prefix" else 1), queries
    assert len(seeks) == len(arms) + 1  # one seek per action, one past the last
    for _sql, plan in seeks:
        assert plan == ["SEARCH audit_events USING COVERING INDEX ix_audit_action (action>?)"]
    for _sql, plan in arms:
        assert plan == ["SEARCH audit_events USING COVERING INDEX ix_audit_action (action=?)"]
    load_sql, load_plan = queries[-1]
    assert load_plan == ["SEARCH audit_events USING INTEGER PRIMARY KEY (rowid=?)"], load_plan
    assert " IN (" in load_sql


@pytest.mark.parametrize("name", ["company", "actor kind:id", "actor login", "upload",
                                  "address"])
def test_single_filter_audit_pages_need_no_sort(engine: Engine, company: Company,
                                                name: str) -> None:
    """An index on one column is ordered by rowid (= id): newest first comes free."""
    with Session(engine) as db, Plans(engine) as plans:
        log_page(db, SEARCHES[name](company), 1)
    assert _sorts(plans.on("audit_events")[-1][1]) == []


def test_unfiltered_audit_page_reads_by_primary_key_with_limit(engine: Engine) -> None:
    """Without a filter the count reads one index (the total is the whole log);
    the page itself walks the primary key backwards and stops after LIMIT rows."""
    with Session(engine) as db, Plans(engine) as plans:
        log_page(db, LogFilters(), 3)
    count_plan = plans.on("audit_events")[0][1]
    assert all("COVERING INDEX" in line for line in _full_scans(count_plan, "audit_events"))
    sql, plan = plans.on("audit_events")[-1]
    assert "LIMIT" in sql and "OFFSET" in sql
    assert _sorts(plan) == [], plan


INBOX = {
    "all": lambda co: InboxFilters(),
    "clean": lambda co: InboxFilters(status="clean"),
    "company": lambda co: InboxFilters(company=co),
    "company+clean": lambda co: InboxFilters(company=co, status="clean"),
    "received week": lambda co: InboxFilters(received_from=WEEK["day_from"],
                                             received_to=WEEK["day_to"]),
}


@pytest.mark.parametrize("name", sorted(INBOX))
def test_inbox_page_is_read_in_index_order_with_limit(engine: Engine, company: Company,
                                                      name: str) -> None:
    manager = Staff(login="boss", role="manager")
    with Session(engine) as db, Plans(engine) as plans:
        inbox_page(db, manager, INBOX[name](company), 1)
    sql, plan = plans.on("uploads")[-1]
    assert "LIMIT" in sql
    assert _sorts(plan) == [], (name, plan)
    assert any(line.startswith(("SEARCH uploads USING INDEX", "SCAN uploads USING INDEX"))
               for line in plan), plan
    if name != "all":  # all: the page walks ix_uploads_created and stops at LIMIT
        for _sql, p in plans.on("uploads"):
            assert _full_scans(p, "uploads") == [], (name, p)


def test_room_list_uses_the_company_index(engine: Engine, company: Company) -> None:
    """The same statement as portal.client.views.index (newest 200 of one company)."""
    with Session(engine) as db, Plans(engine) as plans:
        db.execute(select(Upload).where(Upload.company_id == company.id)
                   .order_by(Upload.created_at.desc()).limit(200)).all()
    (sql, plan), = plans.on("uploads")
    assert plan == ["SEARCH uploads USING INDEX ix_uploads_company_created (company_id=?)"]
    assert "LIMIT" in sql


# -- the action search still means what it meant ----------------------------------

LOGGED_ACTIONS = [
    "office:file:vaulted", "office:file:downloaded", "Office:File:Vaulted", "office:filez",
    "office:file_x", "office:fileAx", "office%odd", "officer", "office:file:vaulted:again",
    "office:session:login", "client:upload:received", "a\\b", "system:scan:clean",
]
PREFIXES = ["office:file:", "office:", "OFFICE:FILE:", "office:file_", "office%", "o",
            "office:file:vaulted", "client:upload:received", "a\\", "nothing:", "office:filez",
            "z", "officer:"]


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, list[AuditEvent]]]:
    """A log whose actions differ in case, hold LIKE wildcards and share prefixes,
    interleaved over 400 ids and two companies."""
    home: Path = tmp_path_factory.mktemp("actions")
    settings = Settings.from_env({"KINKO_HOME": str(home)})
    migrate(settings)
    eng = make_engine(settings.database_url)
    with Session(eng) as db:
        co = Company(code="one", name="One")
        db.add(co)
        db.flush()
        for i in range(400):
            action = LOGGED_ACTIONS[(i * 7 + i // 13) % len(LOGGED_ACTIONS)]
            db.add(AuditEvent(action=action, actor_kind="system", company_id=co.id if i % 3
                              else None, prev_hash="0" * 64, hash=f"{i:064x}"))
        db.commit()
        events = list(db.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
        db.expunge_all()
    yield eng, events
    eng.dispose()


def _expected(events: list[AuditEvent], prefix: str, company_id: int | None = None
              ) -> list[int]:
    """SQLite's LIKE 'prefix%': ASCII case folded, % and _ literal once escaped."""
    return [e.id for e in reversed(events)
            if e.action.lower().startswith(prefix.lower())
            and (company_id is None or e.company_id == company_id)]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_action_search_pages_are_the_newest_matches_in_order(
        varied: tuple[Engine, list[AuditEvent]], prefix: str) -> None:
    eng, events = varied
    want = _expected(events, prefix)
    for size in (1, 7, 50, 1000):
        got: list[int] = []
        with Session(eng) as db:
            first = log_page(db, LogFilters(action=prefix), 1, size)
            assert first.total == len(want) and first.pages == max(1, -(-len(want) // size))
            for number in range(1, first.pages + 1):
                page = log_page(db, LogFilters(action=prefix), number, size)
                assert page.number == number
                got += [e.id for e in page.items]
            # Past the last page: the last page again, as before.
            beyond = log_page(db, LogFilters(action=prefix), first.pages + 5, size)
            assert [e.id for e in beyond.items] == want[(first.pages - 1) * size:][:size]
        assert got == want, (prefix, size)


@pytest.mark.parametrize("prefix", ["", "office:", "client:upload:"])
def test_the_count_stops_at_its_cap_and_pages_go_as_deep(
        varied: tuple[Engine, list[AuditEvent]], prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    eng, events = varied
    want = _expected(events, prefix)
    cap = len(want) // 2
    assert cap > 4
    monkeypatch.setattr(auditlog, "COUNT_CAP", cap)
    with Session(eng) as db:
        first = log_page(db, LogFilters(action=prefix), 1, 3)
        assert (first.total, first.more, first.pages) == (cap, True, -(-cap // 3))
        deepest = log_page(db, LogFilters(action=prefix), 10**6, 3)
        assert deepest.number == first.pages
        assert [e.id for e in deepest.items] == want[(first.pages - 1) * 3:][:3]
        monkeypatch.setattr(auditlog, "COUNT_CAP", len(want))  # exactly at the cap: exact
        exact = log_page(db, LogFilters(action=prefix), 1, 3)
        assert (exact.total, exact.more) == (len(want), False)


def test_action_search_with_another_filter_keeps_both(
        varied: tuple[Engine, list[AuditEvent]]) -> None:
    eng, events = varied
    with Session(eng) as db:
        co = db.execute(select(Company).where(Company.code == "one")).scalar_one()
        page = log_page(db, LogFilters(action="office:file", company=co), 1, 1000)
        assert [e.id for e in page.items] == _expected(events, "office:file", co.id)
        assert page.total == len(page.items) > 0


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A throwaway PostgreSQL on loopback (tests/pgserver.py), migrated to head, with
    20,000 events: common actions on most ids, three rare ``office:rare:*`` ones
    spread thin, then ANALYZE (PostgreSQL plans by its statistics)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from pgserver import PostgresServer, bindir
    if bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    pg = PostgresServer().start()
    try:
        home: Path = tmp_path_factory.mktemp("plans-pg")
        migrate(Settings.from_env({"KINKO_HOME": str(home),
                                   "KINKO_DATABASE_URL": pg.admin_url}))
        eng = make_engine(pg.admin_url)
        with eng.begin() as conn:
            conn.execute(text(
                "INSERT INTO audit_events (at, action, actor_kind, actor_label, details, "
                "prev_hash, hash) "
                "SELECT now(), CASE WHEN g % 97 = 0 THEN 'office:rare:' || (g % 3) ELSE "
                "(ARRAY['client:upload:received', 'office:file:vaulted', 'system:scan:clean',"
                " 'Office:Rare:X'])[1 + g % 4] END, 'system', '', '{}', md5(g::text), "
                "md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 20000) g"))
            conn.execute(text("ANALYZE audit_events"))
        yield eng
        eng.dispose()
    finally:
        pg.stop()


class PgPlans(Plans):
    def _explain(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                 context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            cursor.execute("EXPLAIN " + statement, parameters)
            self.seen.append((statement, [str(row[0]) for row in cursor.fetchall()]))


def test_action_search_on_postgresql_pages_from_the_index(pg_engine: Engine) -> None:
    """The same search on PostgreSQL: ix_audit_action is (action text_pattern_ops, id);
    the seeks walk it with ~>~ / ORDER BY USING ~<~, each action is read backwards from
    it with LIMIT; no Sort, no Seq Scan.  PostgreSQL's LIKE is case-sensitive, so
    'Office:Rare:X' is not under 'office:rare:'."""
    with Session(pg_engine) as db:
        want = list(db.execute(LogFilters(action="office:rare:").query()
                               .with_only_columns(AuditEvent.id)
                               .order_by(AuditEvent.id.desc())).scalars())
    assert len(want) == 20000 // 97
    got: list[int] = []
    with Session(pg_engine) as db, PgPlans(pg_engine) as plans:
        for number in (1, 2, 3, 4, 5):
            got += [e.id for e in log_page(db, LogFilters(action="office:rare:"), number,
                                           size=50).items]
    assert got == want
    plans_text = ["\n".join(plan) for _sql, plan in plans.on("audit_events")]
    assert plans_text and not [p for p in plans_text if "Sort" in p or "Seq Scan" in p], \
        plans_text
    arms = [p for sql, p in zip([s for s, _ in plans.on("audit_events")], plans_text,
                                strict=True)
            if "ORDER BY audit_events.id DESC" in sql and " = " in sql]
    assert len(arms) == 5 * 3
    assert all("Index Only Scan Backward using ix_audit_action" in p for p in arms), arms
    seeks = [p for sql, p in zip([s for s, _ in plans.on("audit_events")], plans_text,
                                 strict=True) if "USING ~<~" in sql]
    assert len(seeks) == 5 * 4
    assert all("Index Only Scan using ix_audit_action" in p for p in seeks), seeks
