"""The office inbox over 1,000 uploads: filters, pagination, handler scoping, LIMIT.

An in-process instance (no network, no clamd); rows are inserted directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, insert, select
from sqlalchemy.engine import Engine

import portal.office
from portal.auth.passwords import hash_password
from portal.instance import init_instance
from portal.models import AuditEvent, Company, Staff, Upload
from portal.office.retention import has_number_run
from portal.office.views import InboxFilters, inbox_page
from portal.services import Services, build_services
from portal.settings import Settings

BASE = "https://localhost"
PASSWORD = "Unit-Passw0rd"  # noqa: S105 - a test account
JST = ZoneInfo("Asia/Tokyo")
N = 1000
STATUSES = ["received", "scanning", "clean", "vaulted", "infected", "refused", "clean"]
PURPOSES = ["koyo", "shaho", "gensen"]
START = datetime(2024, 1, 1, 0, 0)  # naive UTC, as stored


@dataclass
class Row:
    id: str
    company: str
    status: str
    purpose: str
    created_at: datetime


@dataclass
class World:
    settings: Settings
    svc: Services
    rows: list[Row]
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home: Path = tmp_path_factory.mktemp("kinko-inbox")
    settings = Settings.from_env({"KINKO_HOME": str(home),
                                  "KINKO_CLAMD": "unix:///nonexistent/clamd.sock"})
    init_instance(settings)
    svc = build_services(settings, "office")
    secrets = {"boss": pyotp.random_base32(), "hana": pyotp.random_base32()}
    rows: list[Row] = []
    with svc.sessions() as db, db.begin():
        companies = {code: Company(code=code, name=f"Company {code.upper()}")
                     for code in ("a", "b", "c")}
        db.add_all(companies.values())
        db.flush()
        db.add(Staff(login="boss", role="manager", password_hash=hash_password(PASSWORD),
                     totp_secret=secrets["boss"]))
        db.add(Staff(login="hana", role="handler", password_hash=hash_password(PASSWORD),
                     totp_secret=secrets["hana"],
                     companies=[companies["a"], companies["b"]]))
        values = []
        for i in range(N):
            code = "abc"[i % 3]
            row = Row(f"{i:032x}", code, STATUSES[i % len(STATUSES)], PURPOSES[(i // 3) % 3],
                      START + timedelta(minutes=30 * i))
            rows.append(row)
            values.append({"id": row.id, "company_id": companies[code].id,
                           "filename": f"file-{i}.csv", "purpose_code": row.purpose,
                           "status": row.status, "size": 100 + i, "sha256": "0" * 64,
                           "created_at": row.created_at, "updated_at": row.created_at})
        db.execute(insert(Upload), values)
    return World(settings, svc, rows, secrets)


@pytest.fixture(scope="module")
def app(world: World) -> Flask:
    return portal.office.create_app(world.settings)


_SESSIONS: dict[tuple[int, str], FlaskClient] = {}


def login(app: Flask, world: World, who: str) -> FlaskClient:
    """One signed-in client per person (a TOTP code is accepted once only)."""
    if (id(app), who) in _SESSIONS:
        return _SESSIONS[id(app), who]
    app.config["WTF_CSRF_ENABLED"] = False
    try:
        tc = app.test_client()
        assert tc.post("/login", base_url=BASE,
                       data={"login": who, "password": PASSWORD}).status_code == 302
        code = pyotp.TOTP(world.secrets[who]).now()
        assert tc.post("/totp", base_url=BASE, data={"code": code}).status_code == 302
    finally:
        app.config["WTF_CSRF_ENABLED"] = True
    _SESSIONS[id(app), who] = tc
    return tc


def staff(world: World, login_id: str) -> Any:
    db = world.svc.sessions()
    return db, db.execute(select(Staff).where(Staff.login == login_id)).scalar_one()


def newest_first(rows: list[Row]) -> list[str]:
    return [r.id for r in sorted(rows, key=lambda r: r.created_at, reverse=True)]


def filters(db: Any, who: Staff, **args: str) -> InboxFilters:
    served = (list(db.execute(select(Company)).scalars()) if who.is_manager
              else list(who.companies))
    return InboxFilters.from_args(args, served)


@pytest.fixture
def boss(world: World) -> Iterator[tuple[Any, Staff]]:
    db, who = staff(world, "boss")
    yield db, who
    db.close()


@pytest.fixture
def hana(world: World) -> Iterator[tuple[Any, Staff]]:
    db, who = staff(world, "hana")
    yield db, who
    db.close()


def test_first_page_is_the_newest_fifty(world: World, boss: tuple[Any, Staff]) -> None:
    db, who = boss
    page = inbox_page(db, who, filters(db, who), 1)
    assert (page.total, page.pages, page.number) == (N, 20, 1)
    assert [u.id for u in page.items] == newest_first(world.rows)[:50]


def test_last_page_and_out_of_range_pages(world: World, boss: tuple[Any, Staff]) -> None:
    db, who = boss
    last = inbox_page(db, who, filters(db, who), 20)
    assert [u.id for u in last.items] == newest_first(world.rows)[950:]
    beyond = inbox_page(db, who, filters(db, who), 999)
    assert beyond.number == 20 and [u.id for u in beyond.items] == [u.id for u in last.items]
    # Every page together is every upload, once.
    seen = [u.id for n in range(1, 21) for u in inbox_page(db, who, filters(db, who), n).items]
    assert seen == newest_first(world.rows)


def test_company_status_and_purpose_filters(world: World, boss: tuple[Any, Staff]) -> None:
    db, who = boss
    f = filters(db, who, company="b", status="clean", purpose="shaho")
    expected = [r for r in world.rows
                if r.company == "b" and r.status == "clean" and r.purpose == "shaho"]
    page = inbox_page(db, who, f, 1)
    assert page.total == len(expected) > 0
    assert [u.id for u in page.items] == newest_first(expected)[:50]
    for status in ("vaulted", "infected"):
        page = inbox_page(db, who, filters(db, who, status=status), 1)
        assert page.total == sum(r.status == status for r in world.rows)
    # Unknown values are ignored rather than trusted.
    page = inbox_page(db, who, filters(db, who, status="bogus", company="nope"), 1)
    assert page.total == N


def test_received_date_range_uses_jst_days(world: World, boss: tuple[Any, Staff]) -> None:
    db, who = boss
    day_from, day_to = date(2024, 1, 2), date(2024, 1, 3)

    def jst_day(r: Row) -> date:
        return r.created_at.replace(tzinfo=UTC).astimezone(JST).date()

    expected = [r for r in world.rows if day_from <= jst_day(r) <= day_to]
    page = inbox_page(db, who, filters(db, who, **{"from": "2024-01-02", "to": "2024-01-03"}), 1)
    assert page.total == len(expected) == 96  # two days of one upload every 30 minutes
    assert [u.id for u in page.items] == newest_first(expected)[:50]
    only_from = inbox_page(db, who, filters(db, who, **{"from": "2024-01-20"}), 1)
    assert only_from.total == sum(jst_day(r) >= date(2024, 1, 20) for r in world.rows)
    garbage = inbox_page(db, who, filters(db, who, **{"from": "2024-13-45", "to": "x"}), 1)
    assert garbage.total == N


def test_handler_sees_only_assigned_companies(world: World, hana: tuple[Any, Staff]) -> None:
    db, who = hana
    mine = [r for r in world.rows if r.company in ("a", "b")]
    page = inbox_page(db, who, filters(db, who), 1)
    assert page.total == len(mine)
    assert [u.id for u in page.items] == newest_first(mine)[:50]
    # Asking for a company the handler does not serve shows nothing of it.
    page = inbox_page(db, who, filters(db, who, company="c"), 1)
    assert all(u.company.code in ("a", "b") for u in page.items)
    assert page.total == len(mine)
    page = inbox_page(db, who, filters(db, who, company="a"), 3)
    assert {u.company.code for u in page.items} == {"a"}


def test_inbox_page_uses_count_and_limit_never_all_rows(world: World, app: Flask) -> None:
    tc = login(app, world, "boss")
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        r = tc.get("/?page=2&company=a", base_url=BASE)
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    assert r.status_code == 200, r.data[:500]
    on_uploads = [s for s in statements if re.search(r"\bFROM uploads\b", s)]
    assert any("count(*)" in s.lower() for s in on_uploads), on_uploads
    listing = [s for s in on_uploads if "count(*)" not in s.lower()]
    assert listing, on_uploads
    for s in listing:
        assert "LIMIT" in s and "OFFSET" in s, s
    html = r.get_data(as_text=True)
    assert "2 / 7" in html  # 334 uploads of company a, 50 a page
    assert html.count('name="upload_ids"') == sum(
        1 for rid in newest_first([r for r in world.rows if r.company == "a"])[50:100]
        if next(x for x in world.rows if x.id == rid).status == "clean")


def test_handler_page_lists_no_other_company(world: World, app: Flask) -> None:
    tc = login(app, world, "hana")
    html = tc.get("/?company=c", base_url=BASE).get_data(as_text=True)
    assert "Company C" not in html
    assert "Company A" in html


def test_bulk_pull_queues_only_clean_uploads_of_served_companies(
        world: World, app: Flask) -> None:
    tc = login(app, world, "hana")
    clean = {c: [r.id for r in world.rows if r.company == c and r.status == "clean"]
             for c in "abc"}
    vaulted_a = next(r.id for r in world.rows if r.company == "a" and r.status == "vaulted")
    wanted = [clean["a"][0], clean["b"][0], clean["c"][0], vaulted_a, "nope"]
    app.config["WTF_CSRF_ENABLED"] = False
    try:
        r = tc.post("/pull", base_url=BASE, data={"upload_ids": wanted})
    finally:
        app.config["WTF_CSRF_ENABLED"] = True
    assert r.status_code == 303
    with world.svc.sessions() as db:
        pulled = set(db.execute(select(AuditEvent.upload_id).where(
            AuditEvent.action == "office:vault:pull_requested")).scalars())
    assert pulled == {clean["a"][0], clean["b"][0]}


@pytest.mark.parametrize("text,found", [
    ("退職のため", False), ("社員番号 12345", False), ("123456789012", True),
    ("1234-5678-9012", True), ("１２３４５６７８９０１２", True), ("1234 5678 9012", True),
    ("tel 03-1234-5678", False),
])
def test_number_runs_are_detected(text: str, found: bool) -> None:
    assert has_number_run(text) is found
