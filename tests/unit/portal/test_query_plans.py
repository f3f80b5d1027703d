"""The pages that grow with the instance use indexes and LIMIT, never a sort or a
full scan of every row (SQLite's EXPLAIN QUERY PLAN, on a schema made by the
migrations).  bench/growth.py measures the same pages with 10,000 uploads and
1,000,000 events; this test only looks at the plans, never at a time.

The plans are taken from the real query builders of the pages (``log_page``,
``inbox_page`` and the room's query): every SELECT they run is explained, on
the same connection and with the same parameters, just before it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from portal.db import make_engine
from portal.instance import migrate
from portal.models import Company, Staff, Upload
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


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_audit_search_uses_an_index_and_a_limit(engine: Engine, company: Company,
                                                name: str) -> None:
    with Session(engine) as db, Plans(engine) as plans:
        log_page(db, SEARCHES[name](company), 1)
    queries = plans.on("audit_events")
    assert len(queries) == 2, queries  # the count and the page
    for sql, plan in queries:
        assert plan, sql
        assert _full_scans(plan, "audit_events") == [], (name, sql, plan)
        assert all(line.startswith("SEARCH audit_events USING") for line in plan
                   if "audit_events" in line), (name, plan)
    page_sql = queries[-1][0]
    assert "LIMIT" in page_sql and "ORDER BY audit_events.id DESC" in page_sql


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
