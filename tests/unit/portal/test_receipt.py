"""The client's chain of custody and its receipt (受領書), in process: the steps
come from the handling log in order, name people by display name and purposes
by label, keep the office's own business (reasons, refused attempts) out, and
the PDF carries Japanese text, the SHA-256 and no number."""

from __future__ import annotations

import hashlib
import io
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pypdf import PdfReader

from portal.audit import SYSTEM, Actor, Tag, record
from portal.custody import Step, chain_of_custody, render
from portal.instance import init_instance
from portal.models import ClientUser, Company, Staff, Status, Upload
from portal.receipt import receipt_pdf
from portal.services import Services, build_services
from portal.settings import Settings

NUMBER = "123456789018"
FILENAME = f"山田_{NUMBER}.csv"
CONTENT = b"a,b\n1,2\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


@dataclass
class World:
    svc: Services
    acme: int
    hr: int
    boss: int
    hana: int


@pytest.fixture
def world(tmp_path: Path) -> World:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    svc = build_services(settings, "office")
    with svc.sessions() as db, db.begin():
        acme = Company(code="acme", name="株式会社アクメ")
        db.add(acme)
        db.flush()
        hr = ClientUser(company_id=acme.id, login="hr", password_hash="x",
                        display_name="人事 一郎")
        boss = Staff(login="boss", role="manager", password_hash="x", display_name="所長 太郎")
        hana = Staff(login="hana", role="handler", password_hash="x",
                     display_name="担当 花子", companies=[acme])
        db.add_all([hr, boss, hana])
        db.flush()
        return World(svc, acme.id, hr.id, boss.id, hana.id)


def add_upload(w: World, *, status: str = Status.VAULTED, filename: str = FILENAME,
               reason: str | None = None, signature: str | None = None) -> str:
    upload_id = secrets.token_hex(16)
    with w.svc.sessions() as db, db.begin():
        db.add(Upload(id=upload_id, company_id=w.acme, uploaded_by_id=w.hr, filename=filename,
                      purpose_code="koyo", status=status, size=len(CONTENT), kind="csv",
                      sha256=SHA, reason=reason, signature=signature))
    return upload_id


def log(w: World, upload_id: str, tag: Tag, actor: Actor, **details: object) -> None:
    with w.svc.sessions() as db, db.begin():
        record(db, w.svc.audit_key, tag, actor, company_id=w.acme, upload_id=upload_id,
               details=details)


def full_life(w: World) -> str:
    """Received → scanned → vaulted → downloaded twice → disposed, with noise between."""
    uid = add_upload(w, status=Status.DISPOSED)
    hr, boss, hana = (Actor("client", w.hr, "hr"), Actor("staff", w.boss, "boss"),
                      Actor("staff", w.hana, "hana"))
    log(w, uid, Tag.CLIENT_UPLOAD_RECEIVED, hr, size=len(CONTENT), purpose="koyo")
    log(w, uid, Tag.SCAN_STARTED, SYSTEM)
    log(w, uid, Tag.SCAN_CLEAN, SYSTEM, kind="csv")
    log(w, uid, Tag.PULL_REQUESTED, boss)  # inside the office: not shown
    log(w, uid, Tag.FILE_VAULTED, boss, vault_key_id="ab" * 8)
    log(w, uid, Tag.DROPZONE_DELETED, SYSTEM)
    log(w, uid, Tag.FILE_DOWNLOAD_REFUSED, hana, why="totp")  # not shown
    log(w, uid, Tag.FILE_DOWNLOADED, hana, purpose="gensen")
    log(w, uid, Tag.FILE_DOWNLOADED, boss, purpose="koyo")
    log(w, uid, Tag.DISPOSAL_PROPOSED, hana, reason_chars=9)
    log(w, uid, Tag.DISPOSAL_REFUSED, boss, why="totp")  # a failed approval: not shown
    log(w, uid, Tag.FILE_DISPOSED, boss, record_id=1, method="key_destroyed")
    log(w, uid, Tag.DISPOSAL_APPROVED, boss, record_id=1, proposed_by=w.hana)
    other = add_upload(w)  # another upload's event stays out
    log(w, other, Tag.FILE_DOWNLOADED, boss, purpose="koyo")
    return uid


def steps_of(w: World, uid: str, lang: str = "ja") -> tuple[Upload, list[Step]]:
    with w.svc.sessions() as db:
        upload = db.get(Upload, uid)
        assert upload is not None
        _ = upload.purpose
        return upload, chain_of_custody(db, upload, lang)


def test_the_steps_come_in_order_with_names_and_purposes(world: World) -> None:
    uid = full_life(world)
    _, steps = steps_of(world, uid)
    assert [s.code for s in steps] == [
        "received", "scan_started", "scan_clean", "vaulted", "dropzone_deleted",
        "downloaded", "downloaded", "disposal_proposed", "disposed"]
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    assert all(s.at.tzinfo is not None for s in steps)
    by = [(s.code, s.who, s.who_system) for s in steps]
    assert by[0] == ("received", "人事 一郎", False)
    assert by[1][2] and by[2][2] and by[4][2]  # kinko itself
    assert by[3] == ("vaulted", "所長 太郎", False)
    assert by[5][1] == "担当 花子" and by[6][1] == "所長 太郎"
    assert dict(steps[0].args) == {"sha256": SHA, "size": str(len(CONTENT))}
    assert steps[5].args["purpose"] == "源泉徴収票作成"
    assert steps[6].args["purpose"] == "雇用保険届出"
    assert by[7] == ("disposal_proposed", "担当 花子", False)
    assert by[8] == ("disposed", "所長 太郎", False)

    rows = render(steps, lambda s: s)  # English: the message ids themselves
    assert rows[0].detail == f"SHA-256 {SHA}, {len(CONTENT)} bytes"
    assert rows[1].who == "kinko (automatic)"
    assert rows[5].detail == "Purpose of use: 源泉徴収票作成"  # data in the lang asked for
    _, english = steps_of(world, uid, "en")
    assert english[5].args["purpose"] == "Withholding tax slips"


def test_a_display_name_falls_back_to_the_login(world: World) -> None:
    with world.svc.sessions() as db, db.begin():
        kei = Staff(login="kei", role="manager", password_hash="x", display_name="")
        db.add(kei)
        db.flush()
        kei_id = kei.id
    uid = add_upload(world)
    log(world, uid, Tag.FILE_DOWNLOADED, Actor("staff", kei_id, "kei"), purpose="koyo")
    _, steps = steps_of(world, uid)
    assert [(s.code, s.who) for s in steps] == [("downloaded", "kei")]


def test_infected_and_refused_files_say_why(world: World) -> None:
    infected = add_upload(world, status=Status.INFECTED, reason="malware",
                          signature="Eicar-Signature")
    log(world, infected, Tag.SCAN_INFECTED, SYSTEM, reason="malware", signature="Eicar-Signature")
    refused = add_upload(world, status=Status.REFUSED, reason="encrypted")
    log(world, refused, Tag.SCAN_REFUSED, SYSTEM, reason="encrypted", signature=None)
    (_, inf), (_, ref) = steps_of(world, infected), steps_of(world, refused)
    assert [s.code for s in inf] == ["scan_infected"]
    assert "Eicar-Signature" in render(inf, lambda s: s)[0].detail
    assert [s.code for s in ref] == ["scan_refused"]
    assert "password" in render(ref, lambda s: s)[0].detail


def pdf_text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF")
    return "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_the_receipt_is_a_japanese_pdf_with_the_digest_and_no_number(world: World) -> None:
    uid = full_life(world)
    upload, steps = steps_of(world, uid)
    with world.svc.sessions() as db:
        company = db.get(Company, world.acme)
        assert company is not None
    pdf = receipt_pdf(upload, company, steps, "ja",
                      issued_at=datetime(2025, 4, 1, 3, 0, tzinfo=UTC))
    text = pdf_text(pdf)
    flat = re.sub(r"\s+", "", text)
    assert "受領書" in text
    assert "株式会社アクメ" in text
    assert SHA in flat
    assert "雇用保険届出" in text and "源泉徴収票作成" in text
    assert "所長太郎" in flat and "担当花子" in flat
    assert "2025年4月1日" in text  # issued on, in Japan
    assert NUMBER not in flat and "山田_************.csv" in flat  # the name, masked
    assert not re.search(r"\d{12}", flat.replace(SHA, "").replace(uid, ""))
    assert b"/FontFile2" in pdf  # the Japanese TrueType font is embedded (subset)


def test_the_receipt_masks_full_width_numbers_in_the_name(world: World) -> None:
    uid = add_upload(world, filename="扶養_１２３４ ５６７８ ９０１８.xlsx")
    log(world, uid, Tag.CLIENT_UPLOAD_RECEIVED, Actor("client", world.hr, "hr"), size=8)
    upload, steps = steps_of(world, uid)
    with world.svc.sessions() as db:
        company = db.get(Company, world.acme)
        assert company is not None
    flat = re.sub(r"\s+", "", pdf_text(receipt_pdf(upload, company, steps, "en")))
    assert "Receipt" in flat and "株式会社アクメ" in flat
    rest = flat.replace(upload.sha256, "").replace(uid, "")
    assert "１２３４" not in rest and "9018" not in rest and "扶養_" in rest
