"""Searching and exporting the handling log (portal.auditexport), in process.

An instance without network or clamd; events are written through
``audit.record`` (so the chain stays valid) or, for volume, bulk-inserted
with correctly chained hashes.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import Engine

from portal import auditexport as ax
from portal.audit import GENESIS, Actor, Tag, _mac, record, verify
from portal.instance import init_instance
from portal.models import AuditEvent, Company, Purpose, Upload
from portal.services import Services, build_services
from portal.settings import Settings

NASTY_NAME = '=HYPERLINK("http://x")'


@dataclass
class World:
    svc: Services
    acme: int
    beta: int
    up1: str
    up2: str


@pytest.fixture
def world(tmp_path: Path) -> World:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    svc = build_services(settings, "office")
    key = svc.audit_key
    boss = Actor("staff", 1, "boss")
    with svc.sessions() as db, db.begin():
        acme = Company(code="acme", name="株式会社アクメ")
        beta = Company(code="beta", name="=1+2 商事")
        db.add_all([acme, beta])
        db.flush()
        purpose = db.execute(select(Purpose.code)).scalars().first()
        assert purpose is not None
        up1, up2 = "a" * 32, "b" * 32
        for uid, cid, status in ((up1, acme.id, "vaulted"), (up2, beta.id, "clean")):
            db.add(Upload(id=uid, company_id=cid, filename="社員_123456789018.csv",
                          purpose_code=purpose, status=status, size=10, sha256="0" * 64))
        record(db, key, Tag.COMPANY_CREATED, boss, company_id=acme.id, remote_addr="10.0.0.1",
               details={"code": "acme"})
        record(db, key, Tag.CLIENT_UPLOAD_RECEIVED, Actor("client", 7, "+cmd"),
               company_id=acme.id, upload_id=up1, remote_addr="192.0.2.7",
               details={"size": 10})
        record(db, key, Tag.SCAN_CLEAN, Actor.system(), company_id=acme.id, upload_id=up1)
        record(db, key, Tag.FILE_DOWNLOADED, Actor("staff", 2, NASTY_NAME),
               company_id=acme.id, upload_id=up1, remote_addr="10.0.0.2",
               details={"purpose": "koyo", "display_name": NASTY_NAME})
        record(db, key, Tag.CLIENT_UPLOAD_RECEIVED, Actor("client", 8, "@sum"),
               company_id=beta.id, upload_id=up2, remote_addr="192.0.2.8",
               details={"size": 10})
        record(db, key, Tag.OFFICE_LOGIN_FAILED, Actor("anonymous"), remote_addr="-1+1")
        ids = (acme.id, beta.id)
    return World(svc, ids[0], ids[1], up1, up2)


def _events(w: World, **filters: Any) -> list[AuditEvent]:
    with w.svc.sessions() as db:
        return list(ax.iter_events(db, ax.query_events(db, **filters)))


def _csv(events: list[AuditEvent]) -> bytes:
    buf = io.BytesIO()
    ax.write_csv(events, buf)
    return buf.getvalue()


# -- filters --------------------------------------------------------------------


def test_filters(world: World) -> None:
    w = world
    assert len(_events(w)) == 6
    assert [e.actor_label for e in _events(w, actor="+cmd")] == ["+cmd"]
    assert [e.actor_label for e in _events(w, actor="client:8")] == ["@sum"]
    assert [e.action for e in _events(w, actor="staff:2")] == [Tag.FILE_DOWNLOADED]
    assert {e.upload_id for e in _events(w, company_id=w.acme)} == {None, w.up1}
    assert len(_events(w, company_id=w.acme)) == 4
    assert [e.action for e in _events(w, upload_id=w.up1)] == [
        Tag.CLIENT_UPLOAD_RECEIVED, Tag.SCAN_CLEAN, Tag.FILE_DOWNLOADED]
    assert len(_events(w, action="client:upload:received")) == 2
    assert len(_events(w, action="client:")) == 2  # a prefix
    assert len(_events(w, action="client%")) == 0  # wildcards are literal
    assert len(_events(w, action="office:")) == 3
    assert [e.remote_addr for e in _events(w, addr="10.0.0.2")] == ["10.0.0.2"]
    now = datetime.now(UTC)
    assert len(_events(w, since=now - timedelta(minutes=5), until=now + timedelta(minutes=5))) == 6
    assert _events(w, since=now + timedelta(minutes=5)) == []
    assert _events(w, until=now - timedelta(minutes=5)) == []
    assert len(_events(w, company_id=w.beta, action="client:")) == 1


def test_parse_time_is_jst_unless_zoned() -> None:
    assert ax.parse_time("2025-04-01") == datetime(2025, 3, 31, 15, 0)
    assert ax.parse_time("2025-04-01", end=True) == datetime(2025, 4, 1, 15, 0)
    assert ax.parse_time("2025-04-01T09:30") == datetime(2025, 4, 1, 0, 30)
    assert ax.parse_time("2025-04-01T09:30:00+00:00") == datetime(2025, 4, 1, 9, 30)
    assert ax.parse_time("2025-04-01T09:30:00Z") == datetime(2025, 4, 1, 9, 30)
    with pytest.raises(ax.ExportError):
        ax.parse_time("yesterday")


# -- CSV and JSON lines -------------------------------------------------------------


@pytest.mark.parametrize("value", ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx", "＝1",
                                   NASTY_NAME])
def test_neutralise(value: str) -> None:
    assert ax.neutralise(value) == "'" + value


@pytest.mark.parametrize("value", ["boss", "1-2", "", None, "a=b", "{\"k\": \"=x\"}"])
def test_neutralise_leaves_harmless_cells(value: str | None) -> None:
    assert ax.neutralise(value) == ("" if value is None else value)


def test_csv_has_bom_and_neutralises_formula_cells(world: World) -> None:
    data = _csv(_events(world))
    assert data.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert list(rows[0]) == list(ax.COLUMNS)
    labels = {r["actor_label"] for r in rows}
    assert {"'+cmd", "'@sum", "'" + NASTY_NAME, "boss", "worker", ""} == labels
    assert "'-1+1" in {r["remote_addr"] for r in rows}
    # No cell of the file starts a formula.
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    # The details of the download carry the name inside JSON: inert, kept.
    dl = next(r for r in rows if r["action"] == Tag.FILE_DOWNLOADED)
    assert json.loads(dl["details"])["display_name"] == NASTY_NAME
    assert len(dl["hash"]) == 64 and len(dl["prev_hash"]) == 64


def test_jsonl_keeps_raw_values_and_the_chain_verifies(world: World) -> None:
    buf = io.BytesIO()
    events = _events(world)
    ax.write_jsonl(events, buf)
    lines = [json.loads(x) for x in buf.getvalue().decode("utf-8").splitlines()]
    assert len(lines) == 6
    assert {x["actor_label"] for x in lines} >= {"+cmd", "@sum", NASTY_NAME}
    # A reader with the audit key can check every line and the links.
    prev = GENESIS
    for x in lines:
        ev = AuditEvent(at=datetime.fromisoformat(x["at"]), action=x["action"],
                        actor_kind=x["actor_kind"], actor_id=x["actor_id"],
                        actor_label=x["actor_label"], company_id=x["company_id"],
                        upload_id=x["upload_id"], remote_addr=x["remote_addr"],
                        details=x["details"], prev_hash=x["prev_hash"])
        assert x["prev_hash"] == prev
        assert _mac(world.svc.audit_key, ev) == x["hash"]
        prev = x["hash"]


def test_exports_hold_no_file_names_or_numbers(world: World) -> None:
    blob = _csv(_events(world))
    buf = io.BytesIO()
    ax.write_jsonl(_events(world), buf)
    blob += buf.getvalue()
    assert b"123456789018" not in blob
    assert "社員".encode() not in blob


def test_filters_for_audit_masks_digit_runs() -> None:
    out = ax.filters_for_audit({"actor": "1234 5678 9018", "upload_id": "a1" + "1" * 30,
                                "addr": "", "company": None})
    assert out == {"actor": "**************", "upload_id": "a1" + "1" * 30}


# -- incidents -----------------------------------------------------------------------


def test_incident_contents_and_files(world: World, tmp_path: Path) -> None:
    w = world
    now = datetime.now(UTC)
    with w.svc.sessions() as db:
        inc = ax.incident(db, now - timedelta(minutes=10), now + timedelta(minutes=1))
        assert inc.total == 6
        assert inc.counts[Tag.CLIENT_UPLOAD_RECEIVED] == 2
        assert [(t.upload_id, t.company_code, t.status, t.events) for t in inc.uploads] == [
            (w.up1, "acme", "vaulted", 3), (w.up2, "beta", "clean", 1)]
        assert [c.code for c in inc.companies] == ["acme", "beta"]
        assert ("client", 7, "+cmd") in {(a.kind, a.id, a.label) for a in inc.actors}
        assert inc.first_at is not None and inc.last_at is not None
        paths = ax.write_incident(inc, tmp_path / "inc")
    assert sorted(p.name for p in paths) == sorted(ax.INCIDENT_FILES)
    out = tmp_path / "inc"
    touched = list(csv.DictReader(io.StringIO(
        (out / "touched.csv").read_bytes().decode("utf-8-sig"))))
    assert [r["upload_id"] for r in touched] == [w.up1, w.up2]
    assert touched[1]["company_name"] == "'=1+2 商事"  # neutralised too
    doc = json.loads((out / "touched.json").read_text())
    assert doc["events"] == 6 and len(doc["uploads"]) == 2
    assert len((out / "events.jsonl").read_text().splitlines()) == 6
    summary = (out / "summary.txt").read_text()
    assert w.up1 in summary and w.up2 in summary and "acme" in summary
    assert len(summary.splitlines()) < 80  # one page
    for p in paths:
        data = p.read_bytes()
        assert b"123456789018" not in data and "社員".encode() not in data


def test_incident_filters_by_actor_company_and_addr(world: World) -> None:
    w = world
    now = datetime.now(UTC)
    window = (now - timedelta(minutes=10), now + timedelta(minutes=1))
    with w.svc.sessions() as db:
        by_actor = ax.incident(db, *window, actor="+cmd")
        by_company = ax.incident(db, *window, company_id=w.beta)
        by_addr = ax.incident(db, *window, addr="10.0.0.2")
    assert by_actor.total == 1 and [t.upload_id for t in by_actor.uploads] == [w.up1]
    assert by_company.total == 1 and [c.code for c in by_company.companies] == ["beta"]
    assert by_addr.total == 1 and by_addr.counts == {Tag.FILE_DOWNLOADED.value: 1}
    with w.svc.sessions() as db, pytest.raises(ax.ExportError):
        ax.incident(db, window[1], window[0])


def test_incident_zip_streams_the_same_files(world: World) -> None:
    now = datetime.now(UTC)
    with world.svc.sessions() as db:
        inc = ax.incident(db, now - timedelta(minutes=10), now + timedelta(minutes=1))
    with world.svc.sessions() as db:
        chunks = list(ax.iter_incident_zip(replace(inc, db=db)))
    assert len(chunks) > 1
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as zf:
        assert sorted(zf.namelist()) == sorted(ax.INCIDENT_FILES)
        assert world.up1 in zf.read("touched.csv").decode("utf-8-sig")
        assert zf.read("events.csv").startswith("\ufeff".encode())


# -- volume ----------------------------------------------------------------------------


def test_export_of_20000_events_reads_in_batches(world: World) -> None:
    """20,000 chained events, bulk-inserted; the export reads them in keyset batches."""
    svc = world.svc
    n = 20_000
    with svc.sessions() as db, db.begin():
        prev = db.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc())
                          .limit(1)).scalar_one()
        start = datetime.now(UTC).replace(tzinfo=None)
        rows = []
        for i in range(n):
            ev = AuditEvent(at=start + timedelta(microseconds=i), action=Tag.SCAN_STARTED,
                            actor_kind="system", actor_id=None, actor_label="worker",
                            company_id=world.acme, upload_id=world.up1, remote_addr=None,
                            details="{}", prev_hash=prev)
            ev.hash = _mac(svc.audit_key, ev)
            prev = ev.hash
            rows.append({c: getattr(ev, c) for c in (
                "at", "action", "actor_kind", "actor_id", "actor_label", "company_id",
                "upload_id", "remote_addr", "details", "prev_hash", "hash")})
        db.execute(insert(AuditEvent), rows)
    del rows
    with svc.sessions() as db:
        assert db.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == n + 6
    engine: Engine = svc.sessions.kw["bind"]
    selects: list[str] = []

    def count(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        buf = io.BytesIO()
        with svc.sessions() as db:
            seen = 0
            for ev in ax.iter_events(db, ax.query_events(db, upload_id=world.up1), batch=1000):
                seen += 1
                assert ev not in db  # detached: the session holds no rows
            assert seen == n + 3
            ax.write_jsonl(ax.iter_events(db, ax.query_events(db)), buf)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # ~21 batches per pass, never one query for everything nor one per row.
    assert 40 <= len(selects) <= 50, len(selects)
    assert all("LIMIT" in s for s in selects)
    assert buf.getvalue().count(b"\n") == n + 6
    with svc.sessions() as db:
        checked, broken = verify(db, svc.audit_key)
    assert broken is None and checked == n + 6
