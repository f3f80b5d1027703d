"""The handling ledger and the monthly usage report, in process, with controlled
timestamps across two months and two companies."""

from __future__ import annotations

import csv
import email
import io
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import Message
from pathlib import Path

import pypdf
import pytest
from sqlalchemy import select

from portal import reports
from portal.audit import Actor, Tag, record
from portal.certificate import JST
from portal.instance import init_instance
from portal.models import (
    AuditEvent,
    ClientUser,
    Company,
    DisposalRecord,
    MonthlyReport,
    Staff,
    Status,
    Upload,
)
from portal.notify import outbox_dir
from portal.services import Services, build_services
from portal.settings import Settings

NUMBER = "123456789018"
LONG_AGO = datetime(2026, 1, 1)


def jst(*args: int) -> datetime:
    """A JST wall-clock time as the naive UTC the database stores."""
    return datetime(*args, tzinfo=JST).astimezone(UTC).replace(tzinfo=None)


@dataclass
class World:
    svc: Services
    acme: int
    beta: int
    ids: dict[str, str]


def _upload(db, company_id: int, created: datetime, filename: str, *,  # type: ignore[no-untyped-def]
            status: str = Status.VAULTED, kind: str = "csv", purpose: str = "koyo",
            retention: date | None = date(2033, 3, 31)) -> str:
    uid = secrets.token_hex(16)
    db.add(Upload(id=uid, company_id=company_id, filename=filename, purpose_code=purpose,
                  status=status, kind=kind, size=5000 + len(filename),
                  sha256=secrets.token_hex(32), created_at=created, updated_at=created,
                  retention_until=retention if status == Status.VAULTED else None))
    return uid


def _download(db, key: bytes, staff: Staff, company_id: int, upload_id: str,  # type: ignore[no-untyped-def]
              at: datetime, purpose: str = "koyo") -> None:
    ev = record(db, key, Tag.FILE_DOWNLOADED, Actor("staff", staff.id, staff.login),
                company_id=company_id, upload_id=upload_id, details={"purpose": purpose})
    ev.at = at


def _disposal(db, company_id: int, upload_id: str, at: datetime, who: str) -> None:  # type: ignore[no-untyped-def]
    db.add(DisposalRecord(upload_id=upload_id, company_id=company_id, kind="csv",
                          purpose_code="koyo", size=5000, received_at=LONG_AGO,
                          proposed_by="hana", proposed_at=at, approved_by=who, approved_at=at,
                          reason="退職", method="x"))


@pytest.fixture
def world(tmp_path: Path) -> World:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    svc = build_services(settings, "office")
    ids: dict[str, str] = {}
    with svc.sessions() as db, db.begin():
        acme = Company(code="acme", name="株式会社アクメ", created_at=LONG_AGO)
        beta = Company(code="beta", name="ベータ商事株式会社", created_at=LONG_AGO)
        db.add_all([acme, beta])
        db.flush()
        db.add_all([
            ClientUser(company_id=acme.id, login="hr", password_hash="x",
                       email="hr@acme.example"),
            ClientUser(company_id=acme.id, login="hr2", password_hash="x",
                       email="hr2@acme.example"),
            ClientUser(company_id=acme.id, login="nomail", password_hash="x"),
            ClientUser(company_id=beta.id, login="hr", password_hash="x",
                       email="hr@beta.example"),
        ])
        boss = Staff(login="boss", role="manager", password_hash="x", display_name="所長")
        kei = Staff(login="kei", role="manager", password_hash="x")
        hana = Staff(login="hana", role="handler", password_hash="x", display_name="花子",
                     companies=[acme])
        yuki = Staff(login="yuki", role="handler", password_hash="x", display_name="雪",
                     companies=[beta])
        db.add_all([boss, kei, hana, yuki])
        db.flush()
        # acme: September, the October boundaries, November.
        ids["sep"] = _upload(db, acme.id, jst(2026, 9, 30, 23, 59), f"九月_{NUMBER}.csv",
                             status=Status.DISPOSED)
        ids["sep_kept"] = _upload(db, acme.id, jst(2026, 9, 10, 9, 0), "九月名簿.xlsx",
                                  kind="xlsx", purpose="gensen",
                                  retention=date(2020, 1, 1))  # due
        ids["oct1"] = _upload(db, acme.id, jst(2026, 10, 1, 0, 0), f"山田_{NUMBER}.csv")
        ids["oct2"] = _upload(db, acme.id, jst(2026, 10, 31, 23, 59), "=SUM(A1)*2.csv",
                              status=Status.REFUSED, retention=None)
        ids["nov"] = _upload(db, acme.id, jst(2026, 11, 1, 0, 0), "十一月.csv")
        ids["beta_oct"] = _upload(db, beta.id, jst(2026, 10, 15, 12, 0), "ベータ十月.csv")
        key = svc.audit_key
        _download(db, key, hana, acme.id, ids["oct1"], jst(2026, 10, 15, 10, 0))
        _download(db, key, boss, acme.id, ids["sep_kept"], jst(2026, 10, 20, 9, 0),
                  purpose="gensen")
        _download(db, key, boss, acme.id, ids["sep_kept"], jst(2026, 9, 20, 9, 0))
        _download(db, key, boss, acme.id, ids["oct1"], jst(2026, 11, 1, 0, 30))
        _download(db, key, yuki, beta.id, ids["beta_oct"], jst(2026, 10, 16, 9, 0))
        _disposal(db, acme.id, ids["sep"], jst(2026, 10, 20, 15, 0), "所長 (boss)")
        ids["old"] = _upload(db, acme.id, jst(2026, 8, 1, 9, 0), "八月.csv",
                             status=Status.DISPOSED)
        _disposal(db, acme.id, ids["old"], jst(2026, 9, 25, 15, 0), "kei")
        ids["beta_gone"] = _upload(db, beta.id, jst(2026, 8, 1, 9, 0), "ベータ八月.csv",
                                   status=Status.DISPOSED)
        _disposal(db, beta.id, ids["beta_gone"], jst(2026, 10, 5, 15, 0), "kei")
        return World(svc, acme.id, beta.id, ids)


def _company(w: World, company_id: int) -> Company:
    with w.svc.sessions() as db:
        c = db.get(Company, company_id)
        assert c is not None
        return c


def pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF")
    return "\n".join(page.extract_text() or "" for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(data[3:].decode("utf-8"))))


def test_month_bounds_are_japan_time() -> None:
    start, end = reports.month_bounds("2026-10")
    assert start == datetime(2026, 9, 30, 15, 0) and end == datetime(2026, 10, 31, 15, 0)
    assert reports.month_bounds("2026-12")[1] == datetime(2026, 12, 31, 15, 0)
    assert reports.previous_month(datetime(2026, 10, 31, 15, 0, tzinfo=UTC)) == "2026-10"
    assert reports.previous_month(datetime(2026, 10, 31, 14, 59, tzinfo=UTC)) == "2026-09"
    assert reports.previous_month(datetime(2027, 1, 5, tzinfo=UTC)) == "2026-12"
    assert reports.month_label("2026-10") == "2026年10月"
    for bad in ("2026-13", "2026-1", "26-10", "2026-10-01", "", "abcd-ef"):
        assert not reports.is_month(bad)


def test_october_report_lists_exactly_octobers_activity(world: World) -> None:
    acme = _company(world, world.acme)
    with world.svc.sessions() as db:
        act = reports.monthly_activity(db, acme, "2026-10")
    ids = world.ids
    assert [r.upload_id for r in act.received] == [ids["oct1"], ids["oct2"]]
    assert act.received[0].filename == "山田_************.csv"
    assert act.received[0].purpose == "雇用保険届出"
    assert [(u.person, u.upload_id, u.purpose) for u in act.used] == [
        ("花子", ids["oct1"], "雇用保険届出"), ("所長", ids["sep_kept"], "源泉徴収票作成")]
    assert act.used[1].filename == "九月名簿.xlsx"
    assert [(d.upload_id, d.approved_by) for d in act.disposed] == [(ids["sep"], "所長 (boss)")]

    beta_company = _company(world, world.beta)
    with world.svc.sessions() as db:
        sep = reports.monthly_activity(db, acme, "2026-09")
        beta = reports.monthly_activity(db, beta_company, "2026-10")
    assert [r.upload_id for r in sep.received] == [ids["sep_kept"], ids["sep"]]
    assert [u.upload_id for u in sep.used] == [ids["sep_kept"]]
    assert [d.upload_id for d in sep.disposed] == [ids["old"]]
    assert [r.upload_id for r in beta.received] == [ids["beta_oct"]]
    assert [u.person for u in beta.used] == ["雪"]
    assert [d.upload_id for d in beta.disposed] == [ids["beta_gone"]]


def test_monthly_csv_is_exact_neutralised_and_numberless(world: World) -> None:
    acme = _company(world, world.acme)
    with world.svc.sessions() as db:
        data = reports.monthly_csv(db, acme, "2026-10")
    rows = csv_rows(data)
    assert len(rows) == 1 + 2 + 2 + 1
    body = rows[1:]
    ids = world.ids
    assert [r[2] for r in body] == [ids["oct1"], ids["oct2"], ids["oct1"], ids["sep_kept"],
                                    ids["sep"]]
    assert body[0][1] == "2026-10-01T00:00:00+09:00"
    assert body[1][3] == "'=SUM(A1)*2.csv"  # a formula is shown as text
    for other in (ids["nov"], ids["beta_oct"], ids["old"], "ベータ"):
        assert other.encode() not in data
    assert NUMBER.encode() not in data
    assert reports.neutralise("+1") == "'+1" and reports.neutralise("-x") == "'-x"
    assert reports.neutralise("@a") == "'@a" and reports.neutralise("a=b") == "a=b"


def test_monthly_pdf_is_japanese_and_numberless(world: World) -> None:
    acme = _company(world, world.acme)
    with world.svc.sessions() as db:
        text = pdf_text(reports.monthly_pdf(db, acme, "2026-10"))
    assert "利用記録レポート" in text
    assert "株式会社アクメ" in text and "2026年10月" in text
    flat = text.replace("\n", "")
    for uid in (world.ids["oct1"], world.ids["oct2"], world.ids["sep"]):
        assert uid in flat
    for uid in (world.ids["nov"], world.ids["beta_oct"], world.ids["old"]):
        assert uid not in flat
    assert NUMBER not in flat and "ベータ" not in flat


def test_ledger_rows_group_by_kind_and_purpose(tmp_path: Path, world: World) -> None:
    acme = _company(world, world.acme)
    with world.svc.sessions() as db:
        rows = reports.ledger_rows(db, acme, world.svc.settings, today=date(2026, 11, 24))
        ledger_csv = reports.ledger_csv(db, acme, world.svc.settings)
        ledger_text = pdf_text(reports.ledger_pdf(db, acme, world.svc.settings))
    by = {(r.kind, r.purpose_code): r for r in rows}
    assert set(by) == {("csv", "koyo"), ("xlsx", "gensen")}
    koyo = by[("csv", "koyo")]
    # nov and oct1 are held; sep and old were disposed of; the refused file is not held.
    assert (koyo.held, koyo.disposed, koyo.due) == (2, 2, 0)
    assert koyo.retention_from == koyo.retention_to == date(2033, 3, 31)
    assert koyo.responsible == "kei、所長"
    assert koyo.access == "kei、所長、花子"  # managers and acme's handler, not beta's
    assert "s3" not in koyo.stored.lower()
    gensen = by[("xlsx", "gensen")]
    assert (gensen.held, gensen.disposed, gensen.due) == (1, 0, 1)
    assert gensen.purpose == "源泉徴収票作成"

    rows_csv = csv_rows(ledger_csv)
    assert len(rows_csv) == 3
    assert "特定個人情報管理台帳" in ledger_text and "株式会社アクメ" in ledger_text
    for data in (ledger_csv.decode("utf-8-sig"), ledger_text):
        assert NUMBER not in data and "山田" not in data and "九月" not in data

    s3 = Settings.from_env({"KINKO_HOME": str(tmp_path / "x"),
                            "KINKO_VAULT_URL": "s3://kinko-vault/secret-prefix/objects"})
    stored = reports.where_stored(s3)
    assert "kinko-vault" in stored and "secret-prefix" not in stored


def _outbox(w: World) -> list[Message]:
    folder = outbox_dir(w.svc.settings)
    if not folder.exists():
        return []
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.iterdir())]


def _body(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(msg.get_content_charset() or "utf-8")


def test_run_monthly_closes_each_month_once_and_notifies(world: World) -> None:
    assert reports.run_monthly(world.svc, datetime(2026, 10, 31, 14, 0, tzinfo=UTC)) != []
    # ↑ the end of September (JST) had passed: September is closed.
    before = len(_outbox(world))
    assert before == 3  # acme: two users with e-mail; beta: one
    after_october = datetime(2026, 10, 31, 15, 30, tzinfo=UTC)  # 2026-11-01 00:30 JST
    closed = reports.run_monthly(world.svc, after_october)
    assert sorted(c.month for c in closed) == ["2026-10", "2026-10"]
    assert sum(c.sent for c in closed) == 3
    assert reports.run_monthly(world.svc, after_october) == []
    assert reports.run_monthly(world.svc, datetime(2026, 11, 20, tzinfo=UTC)) == []
    mails = _outbox(world)
    assert len(mails) == before + 3
    october = [m for m in mails[before:]]
    assert sorted(m["To"] for m in october) == ["hr2@acme.example", "hr@acme.example",
                                               "hr@beta.example"]
    for m in october:
        text = str(m["Subject"]) + _body(m)
        assert "2026年10月" in text
        assert NUMBER not in text and "山田" not in text and "SUM" not in text
    with world.svc.sessions() as db:
        rows = db.execute(select(MonthlyReport).order_by(MonthlyReport.id)).scalars().all()
        events = db.execute(select(AuditEvent).where(
            AuditEvent.action == str(Tag.REPORT_GENERATED))).scalars().all()
    assert [(r.company_id, r.month) for r in rows] == [
        (world.acme, "2026-09"), (world.beta, "2026-09"),
        (world.acme, "2026-10"), (world.beta, "2026-10")]
    assert all(r.notified_at is not None and r.generated_by == "worker" for r in rows)
    assert len(events) == 4


def test_close_month_is_idempotent_and_refuses_the_future(world: World) -> None:
    now = datetime(2026, 10, 10, tzinfo=UTC)
    boss = Actor("staff", 1, "boss")
    first = reports.close_month(world.svc, world.acme, "2026-10", boss, now=now)
    again = reports.close_month(world.svc, world.acme, "2026-10", boss, now=now)
    assert first.created and first.sent == 2
    assert not again.created and again.sent == 0 and again.report_id == first.report_id
    with pytest.raises(reports.ReportError) as exc:
        reports.close_month(world.svc, world.acme, "2026-11", boss, now=now)
    assert exc.value.code == "future_month"
    with pytest.raises(reports.ReportError):
        reports.close_month(world.svc, world.acme, "2026-1", boss, now=now)
    assert len(_outbox(world)) == 2


def test_a_company_created_later_gets_no_report_for_earlier_months(world: World) -> None:
    with world.svc.sessions() as db, db.begin():
        db.add(Company(code="late", name="Late", created_at=datetime(2026, 11, 5)))
    closed = reports.run_monthly(world.svc, datetime(2026, 11, 10, tzinfo=UTC))
    assert sorted(c.month for c in closed) == ["2026-10", "2026-10"]
