"""The scan pass and the pull's verify step, in process: what guards the staged
vault copy, and when the pull reads its copy back."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from portal.audit import SYSTEM
from portal.instance import init_instance
from portal.models import Company, Status, Upload, UploadEvent, utcnow
from portal.pipeline import pull_upload, scan_upload
from portal.services import Services, build_services
from portal.settings import Settings
from storage.envelope import open_envelope, seal

# Random bytes behind a PNG signature: the type policy lets them through.
DATA = b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 65536 + 11)


@dataclass
class Office:
    worker: Services
    office: Services
    opened: list[str]
    home: Path


@pytest.fixture
def office(tmp_path: Path) -> Office:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  # Never reached: the uploads below carry clamd's answer
                                  # from the scan while receiving (uploads.prescan).
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    worker = build_services(settings, "worker")
    opened: list[str] = []
    real_open: Callable[[str], Any] = worker.vault.open

    def spy(key: str) -> Any:
        opened.append(key)
        return real_open(key)

    worker.vault.open = spy  # type: ignore[method-assign]
    return Office(worker, build_services(settings, "office"), opened, tmp_path / "home")


def received(o: Office, *, auto_pull: bool) -> str:
    """A received upload whose clamd answer (clean) was recorded on receipt."""
    upload_id = secrets.token_hex(16)
    key = f"uploads/{upload_id}"
    with o.worker.dropzone.writer(key, {"created": "0"}) as out:
        with seal(out, o.worker.dropzone_key, key, hash_ciphertext=False) as sealed:
            sealed.write(DATA)
    with o.worker.sessions() as db, db.begin():
        company = Company(code=f"c{upload_id[:6]}", name="Acme", auto_pull=auto_pull)
        db.add(company)
        db.flush()
        db.add(Upload(id=upload_id, company_id=company.id, filename="scan.png",
                      purpose_code="koyo", status=Status.RECEIVED, size=len(DATA),
                      sha256=hashlib.sha256(DATA).hexdigest(), dropzone_key=key,
                      prescan="clean", prescan_until=utcnow() + timedelta(minutes=5)))
        db.add(UploadEvent(upload_id=upload_id, status=Status.RECEIVED))
    return upload_id


def vaulted_bytes(o: Office, upload_id: str) -> bytes:
    with o.office.sessions() as db:
        row = db.get(Upload, upload_id)
        assert row is not None and row.status == Status.VAULTED and row.vault_key
        assert row.staged_key is None and row.dropzone_key is None
        key, wrapped = row.vault_key, row.vault_wrapped_key
    assert list(o.office.vault.keys(f"staging/{upload_id}")) == []
    with open_envelope(o.office.vault.open(key), key, unwrapper=o.office.vault_private,
                       wrapped_key=wrapped) as plain:
        return b"".join(plain.iter_chunks(1 << 20))


def test_auto_pull_in_the_scan_job_trusts_the_link_it_just_verified(office: Office) -> None:
    uid = received(office, auto_pull=True)
    assert scan_upload(office.worker, uid, pull_inline=True).status == Status.CLEAN
    # The staged copy was read back once (scan time); the hard link to it was not.
    assert [k.split("/")[0] for k in office.opened] == ["staging"]
    assert vaulted_bytes(office, uid) == DATA


def test_a_later_pull_reads_back_and_catches_a_damaged_staged_copy(office: Office) -> None:
    uid = received(office, auto_pull=False)
    assert scan_upload(office.worker, uid).status == Status.CLEAN
    with office.worker.sessions() as db:
        staged = db.get(Upload, uid).staged_key  # type: ignore[union-attr]
    assert staged is not None
    # Days later one byte of the staged object rots on disk.
    path = office.home / "vault" / "objects" / staged
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x01
    path.write_bytes(bytes(blob))
    office.opened.clear()
    pull_upload(office.worker, uid, SYSTEM)
    # It read the promoted link back, found it differs, dropped it and sealed a
    # fresh copy from the drop zone, which it read back in turn.
    assert [k.split("/")[0] for k in office.opened] == ["vault", "vault"]
    assert vaulted_bytes(office, uid) == DATA


def test_a_real_copy_is_always_read_back(office: Office,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_duplicate = office.worker.vault.duplicate

    def copy_not_link(src: str, dst: str) -> bool:
        real_duplicate(src, dst)
        return False  # as S3's server-side copy reports

    monkeypatch.setattr(office.worker.vault, "duplicate", copy_not_link)
    uid = received(office, auto_pull=True)
    scan_upload(office.worker, uid, pull_inline=True)
    assert [k.split("/")[0] for k in office.opened] == ["staging", "vault"]
    assert vaulted_bytes(office, uid) == DATA


def test_bytes_that_differ_from_the_recorded_digest_leave_no_staged_copy(
        office: Office) -> None:
    # The staged copy has no digest of its own: the pass's digest check guards it.
    uid = received(office, auto_pull=True)
    with office.worker.sessions() as db, db.begin():
        db.get(Upload, uid).sha256 = hashlib.sha256(b"other").hexdigest()  # type: ignore[union-attr]
    assert scan_upload(office.worker, uid, pull_inline=True).status == Status.REFUSED
    with office.worker.sessions() as db:
        row = db.get(Upload, uid)
        assert row is not None and row.reason == "damaged" and row.staged_key is None
    assert list(office.worker.vault.keys()) == []
