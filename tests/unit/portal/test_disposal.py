"""Disposal (廃棄) in process: two people, crypto-shredding, crash-safe deletion,
and a record and certificate that carry no number."""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from portal import disposal
from portal.audit import Tag
from portal.certificate import certificate_pdf
from portal.disposal import DisposalError
from portal.instance import init_instance
from portal.models import (
    AuditEvent,
    ClientUser,
    Company,
    DeletionRequest,
    DisposalRecord,
    Staff,
    Status,
    Upload,
    UploadEvent,
)
from portal.pipeline import pull_upload
from portal.reconcile import reconcile
from portal.services import Services, build_services
from portal.settings import Settings
from storage.envelope import open_envelope, seal
from storage.errors import StorageError

NUMBER = "123456789018"
CONTENT = f"氏名,個人番号\n山田太郎,{NUMBER}\n".encode()
FILENAME = f"山田_{NUMBER}.csv"


@dataclass
class Office:
    svc: Services
    acme: int
    beta: int
    boss: Staff
    kei: Staff
    hana: Staff
    yuki: Staff  # handler of beta only


@pytest.fixture
def office(tmp_path: Path) -> Office:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    svc = build_services(settings, "office")
    with svc.sessions() as db, db.begin():
        acme, beta = Company(code="acme", name="株式会社アクメ"), Company(code="beta", name="Beta")
        db.add_all([acme, beta])
        db.flush()
        db.add(ClientUser(company_id=acme.id, login="hr", password_hash="x"))
        people = [Staff(login="boss", role="manager", password_hash="x", display_name="所長"),
                  Staff(login="kei", role="manager", password_hash="x"),
                  Staff(login="hana", role="handler", password_hash="x", companies=[acme]),
                  Staff(login="yuki", role="handler", password_hash="x", companies=[beta])]
        db.add_all(people)
        db.flush()
        for p in people:
            _ = p.companies
        return Office(svc, acme.id, beta.id, *people)


def vaulted_upload(o: Office, data: bytes = CONTENT, filename: str = FILENAME) -> str:
    """A clean upload in the drop zone, pulled into the vault by the real pipeline."""
    import hashlib
    upload_id = secrets.token_hex(16)
    key = f"dz/{upload_id}"
    with o.svc.dropzone.writer(key, {"created": "0"}) as out:
        sealed = seal(out, o.svc.dropzone_key, key)
        sealed.write(data)
        sealed.close()
    with o.svc.sessions() as db, db.begin():
        db.add(Upload(id=upload_id, company_id=o.acme, filename=filename, purpose_code="koyo",
                      status=Status.CLEAN, size=len(data), kind="csv",
                      sha256=hashlib.sha256(data).hexdigest(), dropzone_key=key))
        db.add(UploadEvent(upload_id=upload_id, status=Status.CLEAN))
    pull_upload(o.svc, upload_id, disposal.staff_actor(o.boss))
    return upload_id


def propose(o: Office, upload_id: str, staff: Staff, reason: str = "保管期限満了") -> None:
    with o.svc.sessions() as db, db.begin():
        disposal.propose(db, o.svc, db.get(Staff, staff.id), db.get(Upload, upload_id), reason)


def row(o: Office, upload_id: str) -> Upload:
    with o.svc.sessions() as db:
        u = db.get(Upload, upload_id)
        assert u is not None
        _ = u.events
        return u


def actions(o: Office, upload_id: str) -> list[str]:
    with o.svc.sessions() as db:
        return list(db.execute(select(AuditEvent.action).where(AuditEvent.upload_id == upload_id)
                               .order_by(AuditEvent.id)).scalars())


def refusals(o: Office, upload_id: str) -> list[str]:
    with o.svc.sessions() as db:
        return [d for d in db.execute(select(AuditEvent.details).where(
            AuditEvent.upload_id == upload_id,
            AuditEvent.action == Tag.DISPOSAL_REFUSED.value)).scalars()]


def vault_keys(o: Office, upload_id: str) -> list[str]:
    return list(o.svc.vault.keys(f"vault/{upload_id}"))


# -- refusals ------------------------------------------------------------------------

def test_the_proposer_cannot_approve_even_as_a_manager(office: Office) -> None:
    uid = vaulted_upload(office)
    propose(office, uid, office.boss)
    with pytest.raises(DisposalError) as exc:
        disposal.approve(office.svc, uid, office.boss)
    assert exc.value.code == "same_person"
    assert row(office, uid).status == Status.VAULTED
    assert '"same_person"' in refusals(office, uid)[0]
    assert len(vault_keys(office, uid)) == 1


def test_a_handler_cannot_approve(office: Office) -> None:
    uid = vaulted_upload(office)
    propose(office, uid, office.boss)
    with pytest.raises(DisposalError) as exc:
        disposal.approve(office.svc, uid, office.hana)
    assert exc.value.code == "not_manager"
    assert row(office, uid).vault_wrapped_key is not None
    assert Tag.DISPOSAL_REFUSED.value in actions(office, uid)


def test_approval_before_a_proposal_is_refused(office: Office) -> None:
    uid = vaulted_upload(office)
    with pytest.raises(DisposalError) as exc:
        disposal.approve(office.svc, uid, office.kei)
    assert exc.value.code == "not_proposed"
    assert row(office, uid).status == Status.VAULTED
    assert '"not_proposed"' in refusals(office, uid)[0]


def test_a_handler_outside_the_company_sees_nothing(office: Office) -> None:
    uid = vaulted_upload(office)
    with pytest.raises(DisposalError) as exc:
        propose(office, uid, office.yuki)
    assert exc.value.code == "not_found"


@pytest.mark.parametrize(("reason", "code"), [
    ("", "no_reason"), ("  ", "no_reason"), ("x" * 1001, "reason_too_long"),
    (f"退職者 {NUMBER} の分", "reason_has_number"), ("番号 1234-5678-9018", "reason_has_number"),
    ("番号１２３４５６７８９０１８", "reason_has_number"),
])
def test_a_proposal_needs_a_reason_without_numbers(office: Office, reason: str,
                                                   code: str) -> None:
    uid = vaulted_upload(office)
    with pytest.raises(DisposalError) as exc:
        propose(office, uid, office.hana, reason)
    assert exc.value.code == code
    assert row(office, uid).disposal_proposed_by_id is None


def test_only_vaulted_files_can_be_proposed_and_only_once(office: Office) -> None:
    uid = vaulted_upload(office)
    propose(office, uid, office.hana)
    with pytest.raises(DisposalError) as exc:
        propose(office, uid, office.boss)
    assert exc.value.code == "already_proposed"
    disposal.approve(office.svc, uid, office.boss)
    with pytest.raises(DisposalError) as exc:
        propose(office, uid, office.hana)
    assert exc.value.code == "not_vaulted"


def test_a_proposal_can_be_withdrawn(office: Office) -> None:
    uid = vaulted_upload(office)
    propose(office, uid, office.hana)
    with office.svc.sessions() as db, db.begin():
        disposal.withdraw(db, office.svc, db.get(Staff, office.hana.id), db.get(Upload, uid))
    assert row(office, uid).disposal_proposed_by_id is None
    with pytest.raises(DisposalError):
        disposal.approve(office.svc, uid, office.boss)


# -- disposal ------------------------------------------------------------------------

def test_approval_shreds_the_key_deletes_every_copy_and_keeps_a_clean_record(
        office: Office) -> None:
    uid = vaulted_upload(office)
    before = row(office, uid)
    assert before.vault_key is not None and before.vault_wrapped_key is not None
    backup = office.svc.vault.open(before.vault_key).read()  # an "old backup" copy
    # A stale attempt and a drop-zone remnant, as a crash could leave them.
    with office.svc.vault.writer(f"vault/{uid}.stale", {"created": "0"}) as w:
        w.write(b"stale")
    with office.svc.dropzone.writer(f"dz/{uid}", {"created": "0"}) as w:
        w.write(b"remnant")
    with office.svc.sessions() as db, db.begin():
        db.add(DeletionRequest(upload_id=uid, company_id=office.acme,
                               requested_by_id=1, reason="退職"))
    propose(office, uid, office.hana)

    rec = disposal.approve(office.svc, uid, office.boss)

    after = row(office, uid)
    assert after.status == Status.DISPOSED and after.disposed_at is not None
    assert after.vault_wrapped_key is None and after.vault_key is None
    assert after.dropzone_key is None
    assert NUMBER not in after.filename and after.filename.endswith(".csv")
    assert [e.status for e in after.events][-1] == Status.DISPOSED
    assert vault_keys(office, uid) == []
    assert list(office.svc.dropzone.keys(f"dz/{uid}")) == []
    with office.svc.sessions() as db:
        req = db.execute(select(DeletionRequest).where(DeletionRequest.upload_id == uid)
                         ).scalar_one()
        assert req.status == "done" and req.closed_at is not None
    acts = actions(office, uid)
    assert Tag.FILE_DISPOSED.value in acts and Tag.DISPOSAL_APPROVED.value in acts

    # The backup copy is undecryptable: its key existed only wrapped, in the row.
    assert office.svc.vault_private is not None
    with pytest.raises(StorageError):
        open_envelope(io.BytesIO(backup), before.vault_key,
                      unwrapper=office.svc.vault_private, wrapped_key=None).read()

    # The record: who, when, why, what kind; never a name, a digest or a number.
    assert rec.proposed_by == "hana" and rec.approved_by == "所長 (boss)"
    assert rec.kind == "csv" and rec.size == len(CONTENT) and rec.reason == "保管期限満了"
    text = " ".join(str(getattr(rec, c.name)) for c in DisposalRecord.__table__.columns)
    assert NUMBER not in text and "山田" not in text and before.sha256 not in text
    assert not re.search(r"\d{12}", text.replace(uid, ""))

    # Approving again is harmless and returns the same record.
    assert disposal.approve(office.svc, uid, office.boss).id == rec.id


def test_a_crash_after_the_commit_is_finished_by_running_approve_again(
        office: Office, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = vaulted_upload(office)
    key = row(office, uid).vault_key
    propose(office, uid, office.hana)

    def crash(_key: str) -> None:
        raise StorageError("simulated crash before the delete")

    monkeypatch.setattr(office.svc.vault, "delete", crash)
    with pytest.raises(StorageError):
        disposal.approve(office.svc, uid, office.kei)
    monkeypatch.undo()

    # Step 1 is durable: the key is already destroyed, the object not yet gone.
    half = row(office, uid)
    assert half.status == Status.DISPOSED and half.vault_wrapped_key is None
    assert half.vault_key == key and vault_keys(office, uid) == [key]
    # Reconcile must not get in the way (it skips an upload's named object).
    reconcile(office.svc, orphan_age=0)

    rec = disposal.approve(office.svc, uid, office.kei)
    assert vault_keys(office, uid) == [] and row(office, uid).vault_key is None
    with office.svc.sessions() as db:
        assert db.execute(select(DisposalRecord).where(DisposalRecord.upload_id == uid)
                          ).scalar_one().id == rec.id
    assert actions(office, uid).count(Tag.FILE_DISPOSED.value) == 1


def test_finish_pending_repairs_interrupted_disposals(
        office: Office, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = vaulted_upload(office)
    propose(office, uid, office.hana)
    monkeypatch.setattr(office.svc.vault, "delete",
                        lambda _k: (_ for _ in ()).throw(StorageError("down")))
    with pytest.raises(StorageError):
        disposal.approve(office.svc, uid, office.boss)
    monkeypatch.undo()
    assert disposal.finish_pending(office.svc) == [uid]
    assert vault_keys(office, uid) == [] and row(office, uid).vault_key is None
    assert disposal.finish_pending(office.svc) == []


# -- certificate ---------------------------------------------------------------------

@pytest.fixture
def disposed(office: Office) -> Iterator[tuple[Office, str]]:
    uid = vaulted_upload(office)
    propose(office, uid, office.hana, "保管期限満了のため")
    disposal.approve(office.svc, uid, office.boss)
    yield office, uid


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_the_certificate_names_the_company_but_no_number(disposed: tuple[Office, str],
                                                         lang: str) -> None:
    from pypdf import PdfReader
    office, uid = disposed
    with office.svc.sessions() as db:
        rec = disposal.record_for(db, uid)
        assert rec is not None and disposal.record_for(db, str(rec.id)) is not None
        company = db.get(Company, rec.company_id)
        assert company is not None
        pdf = certificate_pdf(rec, company, lang, purpose_label="雇用保険届出")
    assert pdf.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(pdf))
    text = "".join(page.extract_text() for page in reader.pages)
    assert "株式会社アクメ" in text and "保管期限満了のため" in text and "雇用保険届出" in text
    assert str(rec.id) in text
    if lang == "en":
        assert "Certificate of Disposal" in text
    assert NUMBER not in text and "山田" not in text
    assert not re.search(r"\d{12}", text.replace(uid, ""))
    assert b"/FontFile2" in pdf  # the Japanese TrueType font is embedded (subset)
