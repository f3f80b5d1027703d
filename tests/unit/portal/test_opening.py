"""Opening a kept protected upload, in process over real storage and SQLite: an
opening that stops half-way loses no file, and no file ever comes out twice.

The crash is simulated by ``portal.opening.checkpoint`` (the point where the
fault-injection tests SIGKILL the client app, after each registered file)
raising: the state left behind is the same, since the opening has no clean-up
of its own.  ``tests/functional/test_unlock.py`` does it with real crashes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pyzipper
from sqlalchemy import select

from portal import opening
from portal.accounts import create_client_user, create_company
from portal.audit import SYSTEM, Tag
from portal.instance import init_instance
from portal.models import AuditEvent, ClientUser, Status, Upload, utcnow
from portal.services import Services, build_services
from portal.settings import Settings
from portal.unlock import UnlockError, save_opening_enabled
from storage.envelope import seal

PASSWORD = "Tokkyo-キョカ-4711"


class _Crash(Exception):
    """Stands for the SIGKILL at the checkpoint."""


@dataclass
class Room:
    services: Services
    user: ClientUser


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path / "home"),
                                  "KINKO_SCAN_ON_RECEIPT": "0",
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    services = build_services(settings, "client")
    with services.sessions() as db, db.begin():
        company = create_company(db, services.audit_key, SYSTEM, "acme", "Acme")
        user, _ = create_client_user(db, services.audit_key, SYSTEM, company.id, "hr",
                                     password="Opening-Test-Passw0rd!")
        save_opening_enabled(db, True)
        db.flush()
        db.expunge(user)
    yield Room(services, user)


def protected_zip(files: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(PASSWORD.encode())
        for name, body in files:
            zf.writestr(name, body)
    return out.getvalue()


def kept(room: Room, data: bytes) -> str:
    """A protected upload refused as ``encrypted`` whose copy is kept for opening."""
    upload_id = os.urandom(16).hex()
    key = f"dz/{upload_id}"
    with room.services.dropzone.writer(key, {"created": "0"}) as out:
        with seal(out, room.services.dropzone_key, key, hash_ciphertext=False) as sealed:
            sealed.write(data)
    with room.services.sessions() as db, db.begin():
        db.add(Upload(id=upload_id, company_id=room.user.company_id, filename="名簿.zip",
                      purpose_code="koyo", status=Status.REFUSED, reason="encrypted",
                      size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      dropzone_key=key, unlock_until=utcnow() + timedelta(hours=1)))
    return upload_id


def children(room: Room, upload_id: str) -> list[Upload]:
    with room.services.sessions() as db:
        return list(db.execute(select(Upload).where(Upload.opened_from == upload_id)
                               .order_by(Upload.created_at)).scalars())


def opened_events(room: Room, upload_id: str) -> list[dict[str, Any]]:
    with room.services.sessions() as db:
        return [json.loads(e.details) for e in db.execute(
            select(AuditEvent).where(AuditEvent.upload_id == upload_id,
                                     AuditEvent.action == Tag.UPLOAD_OPENED)).scalars()]


def dropzone_keys(room: Room) -> set[str]:
    return set(room.services.dropzone.keys("dz/"))


def assert_each_file_once(room: Room, upload_id: str, files: list[tuple[str, bytes]]) -> None:
    got = children(room, upload_id)
    assert Counter(u.sha256 for u in got) == Counter(
        hashlib.sha256(body).hexdigest() for _, body in files)
    assert sorted(u.filename for u in got) == sorted(name.rsplit("/", 1)[-1]
                                                     for name, _ in files)
    with room.services.sessions() as db:
        original = db.get(Upload, upload_id)
        assert original is not None
        assert original.unlock_until is None and original.dropzone_key is None
    # Every object left in the drop zone belongs to exactly one new upload.
    assert dropzone_keys(room) == {u.dropzone_key for u in got}
    assert len(opened_events(room, upload_id)) == 1


def crash_after(count: int, then: Callable[[], None] | None = None) -> Callable[[str], None]:
    """A checkpoint that "crashes" at its ``count``-th hit (after running ``then``)."""
    hits = [0]

    def checkpoint(name: str) -> None:
        assert name == "opening:registered"
        hits[0] += 1
        if hits[0] == count:
            if then is not None:
                then()
                return
            raise _Crash

    return checkpoint


@contextlib.contextmanager
def other_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run an opening as another client-app process would: with its own slot."""
    mine = opening._ONE_AT_A_TIME
    monkeypatch.setattr(opening, "_ONE_AT_A_TIME", threading.BoundedSemaphore(1))
    try:
        yield
    finally:
        monkeypatch.setattr(opening, "_ONE_AT_A_TIME", mine)


# Two files with the same content under different names: both must come out.
FILES = [("社員/a.csv", b"a,b\n1,2\n"), ("社員/b.csv", b"x,y\n3,4\n"),
         ("c.csv", b"a,b\n1,2\n"), ("d.txt", os.urandom(300_000))]


def test_an_opening_that_stopped_half_way_is_finished_by_the_next(
        room: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = kept(room, protected_zip(FILES))
    monkeypatch.setattr(opening, "checkpoint", crash_after(2))
    with pytest.raises(_Crash):
        opening.open_upload(room.services, room.user, upload_id, PASSWORD, "127.0.0.1")
    assert len(children(room, upload_id)) == 2

    # The reconciler keeps a half-opened copy until its time; the room offers it again.
    assert opening.expire_kept(room.services) == []
    with room.services.sessions() as db:
        row = db.get(Upload, upload_id)
        assert row is not None and opening.can_open(db, row)
        assert len(opening.opened_so_far(db, upload_id)) == 2

    monkeypatch.setattr(opening, "checkpoint", crash_after(0))
    new_ids = opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
    assert len(new_ids) == len(FILES)
    assert_each_file_once(room, upload_id, FILES)
    (details,) = opened_events(room, upload_id)
    assert details["resumed_after"] == 2 and details["opened_into"] == new_ids
    with room.services.sessions() as db:
        row = db.get(Upload, upload_id)
        assert row is not None and not opening.can_open(db, row)
    # Opened once: another try is refused and changes nothing.
    with pytest.raises(UnlockError):
        opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
    assert len(children(room, upload_id)) == len(FILES)


def test_two_openings_at_once_give_each_file_once(
        room: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = kept(room, protected_zip(FILES))
    inner_ids: list[str] = []

    def second_opening() -> None:
        # The double click, landing in the other client-app process (each process
        # opens one file at a time): a second opening runs to its end between the
        # first's first and second file, and then the first goes on.
        monkeypatch.setattr(opening, "checkpoint", crash_after(0))
        with other_process(monkeypatch):
            inner_ids.extend(opening.open_upload(room.services, room.user, upload_id,
                                                 PASSWORD, None))

    monkeypatch.setattr(opening, "checkpoint", crash_after(1, second_opening))
    outer_ids = opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
    assert outer_ids == inner_ids and len(outer_ids) == len(FILES)
    assert_each_file_once(room, upload_id, FILES)


def test_a_file_registered_meanwhile_by_another_opening_is_not_registered_again(
        room: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = kept(room, protected_zip(FILES))

    def second_opening_stops_after_one() -> None:
        # The second opening sees one file out, registers the next one and stops:
        # the first then reaches that file too, and must let it be.
        monkeypatch.setattr(opening, "checkpoint", crash_after(1))
        with other_process(monkeypatch), pytest.raises(_Crash):
            opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
        monkeypatch.setattr(opening, "checkpoint", crash_after(0))

    monkeypatch.setattr(opening, "checkpoint", crash_after(1, second_opening_stops_after_one))
    new_ids = opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
    assert len(new_ids) == len(FILES)
    assert_each_file_once(room, upload_id, FILES)
    (details,) = opened_events(room, upload_id)
    assert "resumed_after" not in details  # this opening started with nothing out


def test_a_half_opened_copy_still_expires_with_a_record(
        room: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = kept(room, protected_zip(FILES))
    monkeypatch.setattr(opening, "checkpoint", crash_after(1))
    with pytest.raises(_Crash):
        opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
    later = utcnow() + timedelta(hours=2)
    assert opening.expire_kept(room.services, now=later) == [upload_id]
    with room.services.sessions() as db:
        row = db.get(Upload, upload_id)
        assert row is not None and row.unlock_until is None and row.dropzone_key is None
        (discarded,) = db.execute(select(AuditEvent.details).where(
            AuditEvent.upload_id == upload_id,
            AuditEvent.action == Tag.UPLOAD_PROTECTED_DISCARDED)).scalars()
    assert json.loads(discarded) == {"why": "expired", "files_out": 1}
    assert len(children(room, upload_id)) == 1  # what came out stays an upload


def test_one_opening_at_a_time_per_process(
        room: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = kept(room, protected_zip(FILES))
    monkeypatch.setattr(opening, "OPENING_WAIT_S", 0.05)
    assert opening._ONE_AT_A_TIME.acquire(timeout=1)  # another opening is running
    try:
        with pytest.raises(UnlockError) as info:
            opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)
    finally:
        opening._ONE_AT_A_TIME.release()
    assert info.value.code == "busy"
    assert children(room, upload_id) == []
    with room.services.sessions() as db:
        row = db.get(Upload, upload_id)
        assert row is not None and row.unlock_attempts == 0 and opening.can_open(db, row)
        (details,) = db.execute(select(AuditEvent.details).where(
            AuditEvent.upload_id == upload_id,
            AuditEvent.action == Tag.UPLOAD_OPEN_FAILED)).scalars()
    assert json.loads(details) == {"reason": "busy"}
    # Its turn comes once the other is done.
    monkeypatch.setattr(opening, "checkpoint", crash_after(0))
    assert len(opening.open_upload(room.services, room.user, upload_id, PASSWORD, None)) == 4
    assert_each_file_once(room, upload_id, FILES)
