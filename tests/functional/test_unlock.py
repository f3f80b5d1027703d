"""Typing the password of a protected upload, over the real stack and clamd.

Setting off (the default): a protected file is refused with the explanation
and its encrypted copy deleted.  Setting on (the manager's admin page): the
copy is kept, the upload page offers a password field; a wrong password is
refused and audited, the right one turns the protected file into a new
upload that clamd scans like any other (clean, or infected for EICAR inside a
protected ZIP).  Five wrong passwords, or the end of the keeping time (the
reconciler), discard the protected copy.  The typed passwords are then
searched for in every file the stack wrote: database, queue, logs, storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openpyxl
import pytest
import pyzipper
import requests
from msoffcrypto.format.ooxml import OOXMLFile
from pypdf import PdfWriter

from portal.i18n import translations

from .harness import (
    Stack,
    build_stack,
    csrf_from,
    eicar,
    embedded_only,
    require_clamd,
    teardown_stack,
)
from .invariants import check_invariants

JA = translations("ja")
WRONG_PASSWORD_MSGID = "The password is not correct. Please check it and try again."
RIGHT = "Tokkyo-キョカ-4711"
WRONG = "Wrong-ダメ-0815"
COMPANY = "acme"


def _xlsx() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws["A1"] = f"社員 {uuid.uuid4()}"
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def protected_xlsx() -> bytes:
    out = io.BytesIO()
    OOXMLFile(io.BytesIO(_xlsx())).encrypt(RIGHT, out)
    return out.getvalue()


def protected_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.add_metadata({"/Title": str(uuid.uuid4())})
    writer.encrypt(user_password=RIGHT, owner_password=None, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def protected_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(RIGHT.encode())
        for name, body in files.items():
            zf.writestr(name, body)
    return out.getvalue()


def set_opening(stack: Stack, enabled: bool) -> requests.Response:
    office = stack.office("boss")
    page = office.get(stack.office_url + "/admin/policy")
    assert page.status_code == 200
    return office.post(stack.office_url + "/admin/policy/password-opening",
                       data={"csrf_token": csrf_from(page.text),
                             "enabled": "1" if enabled else "0"}, allow_redirects=False)


@pytest.fixture
def opening_on(stack: Stack) -> Iterator[None]:
    r = set_opening(stack, True)
    assert r.status_code == 303
    try:
        yield
    finally:
        assert set_opening(stack, False).status_code == 303  # the suite's default


@pytest.fixture(scope="module")
def room(stack: Stack) -> requests.Session:
    return stack.client(COMPANY, "hr", "acme-Passw0rd")


def upload_refused(stack: Stack, token: str, data: bytes, name: str) -> str:
    r = stack.api_upload(token, data, name)
    assert r.status_code == 201, r.text
    upload_id = str(r.json()["id"])
    body = stack.wait_for(token, upload_id, {"clean", "infected", "refused"})
    assert body["status"] == "refused" and "パスワード" in body["reason"], body
    with stack.db() as db:
        reason = db.execute("SELECT reason FROM uploads WHERE id = ?", (upload_id,)).fetchone()
    assert reason[0] == "encrypted"
    return upload_id


def row(stack: Stack, upload_id: str) -> dict[str, Any]:
    with stack.db() as db:
        cur = db.execute("SELECT status, dropzone_key, unlock_until, unlock_attempts, "
                         "opened_from FROM uploads WHERE id = ?", (upload_id,))
        values = cur.fetchone()
    return dict(zip(["status", "dropzone_key", "unlock_until", "unlock_attempts",
                     "opened_from"], values, strict=True))


def actions(stack: Stack, upload_id: str) -> list[tuple[str, str]]:
    with stack.db() as db:
        return [(str(a), str(d)) for a, d in db.execute(
            "SELECT action, details FROM audit_events WHERE upload_id = ? ORDER BY id",
            (upload_id,)).fetchall()]


def type_password(stack: Stack, room: requests.Session, upload_id: str,
                  password: str) -> requests.Response:
    page = room.get(f"{stack.client_url}/uploads/{upload_id}")
    assert page.status_code == 200
    assert 'id="open-with-password"' in page.text
    return room.post(f"{stack.client_url}/uploads/{upload_id}/open",
                     data={"csrf_token": csrf_from(page.text), "password": password},
                     allow_redirects=False)


def flashed(stack: Stack, room: requests.Session, upload_id: str) -> str:
    page = room.get(f"{stack.client_url}/uploads/{upload_id}")
    return " ".join(re.findall(r'class="flash error"[^>]*>(.*?)</', page.text, re.S))


def test_setting_off_refuses_and_deletes(stack: Stack, acme_token: str,
                                         room: requests.Session) -> None:
    upload_id = upload_refused(stack, acme_token, protected_xlsx(), "給与.xlsx")
    state = row(stack, upload_id)
    assert state["dropzone_key"] is None and state["unlock_until"] is None
    page = room.get(f"{stack.client_url}/uploads/{upload_id}")
    assert "open-with-password" not in page.text
    assert "パスワード" in page.text  # the kind explanation, in Japanese
    r = room.post(f"{stack.client_url}/uploads/{upload_id}/open",
                  data={"csrf_token": csrf_from(page.text), "password": RIGHT},
                  allow_redirects=False)
    assert r.status_code == 303
    assert ("client:upload:open_failed", '{"reason":"not_available"}') in [
        (a, d.replace(" ", "")) for a, d in actions(stack, upload_id)]


def test_wrong_then_right_password_gives_a_scanned_clean_upload(
        stack: Stack, acme_token: str, room: requests.Session, opening_on: None) -> None:
    with stack.db() as db:
        changed = db.execute("SELECT details FROM audit_events WHERE action = "
                             "'office:policy:changed' ORDER BY id DESC LIMIT 1").fetchone()
    assert '"password_opening"' in changed[0] and '"enabled": true' in changed[0].replace(
        '"enabled":true', '"enabled": true')

    for data, name in ((protected_xlsx(), "給与.xlsx"), (protected_pdf(), "扶養.pdf")):
        upload_id = upload_refused(stack, acme_token, data, name)
        state = row(stack, upload_id)
        assert state["dropzone_key"] and state["unlock_until"]

        r = type_password(stack, room, upload_id, WRONG)
        assert r.status_code == 303 and r.headers["Location"].endswith(upload_id)
        message = flashed(stack, room, upload_id)
        # The room is Japanese by default: the catalogue's Japanese wording.
        assert JA.gettext(WRONG_PASSWORD_MSGID) in message, message
        assert row(stack, upload_id)["unlock_attempts"] == 1
        assert any(a == "client:upload:open_failed" and "wrong_password" in d
                   for a, d in actions(stack, upload_id))

        r = type_password(stack, room, upload_id, RIGHT)
        assert r.status_code == 303
        new_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        assert new_id != upload_id
        body = stack.wait_for(acme_token, new_id, {"clean", "infected", "refused"})
        assert body["status"] == "clean", body
        assert body["filename"] == name
        assert row(stack, new_id)["opened_from"] == upload_id
        original = row(stack, upload_id)
        assert original["dropzone_key"] is None and original["unlock_until"] is None
        assert [a for a, _ in actions(stack, upload_id)][-2:] == [
            "client:upload:opened_with_password", "system:dropzone:deleted"]
        page = room.get(f"{stack.client_url}/uploads/{upload_id}")
        assert "open-with-password" not in page.text  # opened once only


def test_eicar_inside_a_protected_zip_is_found(
        stack: Stack, acme_token: str, room: requests.Session, opening_on: None) -> None:
    data = protected_zip({"フォルダ/名簿.csv": eicar()})
    upload_id = upload_refused(stack, acme_token, data, "名簿.zip")
    r = type_password(stack, room, upload_id, RIGHT)
    assert r.status_code == 303
    new_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    body = stack.wait_for(acme_token, new_id, {"clean", "infected", "refused"})
    assert body["status"] == "infected", body
    assert body["filename"] == "名簿.csv"


def test_attempts_run_out_and_the_reconciler_expires(
        stack: Stack, acme_token: str, room: requests.Session, opening_on: None) -> None:
    upload_id = upload_refused(stack, acme_token, protected_pdf(), "a.pdf")
    for attempt in range(1, 6):
        r = type_password(stack, room, upload_id, f"{WRONG}{attempt}")
        assert r.status_code == 303
    assert JA.gettext("The password was wrong too many times, so the password-protected "
                      "file was deleted. Please save the file without a password and upload "
                      "it again.") in flashed(stack, room, upload_id)
    state = row(stack, upload_id)
    assert state["dropzone_key"] is None and state["unlock_attempts"] == 5
    assert ("system:upload:protected_discarded" in [a for a, _ in actions(stack, upload_id)])

    kept = upload_refused(stack, acme_token, protected_pdf(), "b.pdf")
    past = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None)
    with stack.db() as db:
        db.execute("UPDATE uploads SET unlock_until = ? WHERE id = ?",
                   (past.isoformat(sep=" "), kept))
    stack.kinko("reconcile")
    assert row(stack, kept)["dropzone_key"] is None
    assert any(a == "system:upload:protected_discarded" and "expired" in d
               for a, d in actions(stack, kept))


@pytest.fixture(scope="module")
def dies_after_each_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_clamd()
    # The client-app process SIGKILLs itself right after registering each file
    # that came out of a protected one (gunicorn starts a new one).
    s = build_stack(tmp_path_factory.mktemp,
                    extra_env={"KINKO_FAULT_CRASH_AT": "opening:registered"})
    try:
        yield s
    finally:
        teardown_stack(s)


def test_an_opening_killed_after_each_file_loses_none_and_doubles_none(
        dies_after_each_file: Stack) -> None:
    stack = dies_after_each_file
    assert set_opening(stack, True).status_code == 303
    token = stack.token(COMPANY, "hr")
    room = stack.client(COMPANY, "hr", "acme-Passw0rd")
    files = {"社員/名簿.csv": f"id,memo\n1,{uuid.uuid4()}\n".encode(),
             "扶養.csv": f"id,memo\n2,{uuid.uuid4()}\n".encode()}
    upload_id = upload_refused(stack, token, protected_zip(files), "書類.zip")

    for done in (1, 2):
        # Each try registers one more file, then the process dies before answering.
        with contextlib.suppress(requests.RequestException):
            r = type_password(stack, room, upload_id, RIGHT)
            pytest.fail(f"the client app answered {r.status_code}")
        with stack.db() as db:
            out = db.execute("SELECT COUNT(*) FROM uploads WHERE opened_from = ?",
                             (upload_id,)).fetchone()[0]
        assert out == done
        stack.kinko("reconcile")  # keeps the half-opened copy: its time has not come
        state = row(stack, upload_id)
        assert state["dropzone_key"] and state["unlock_until"]
        page = room.get(f"{stack.client_url}/uploads/{upload_id}")
        assert 'id="opening-resume"' in page.text and 'id="open-with-password"' in page.text

    # Everything is out: this try registers nothing, so it lives to finish.
    r = type_password(stack, room, upload_id, RIGHT)
    assert r.status_code == 303
    with stack.db() as db:
        got = db.execute("SELECT id, sha256, filename FROM uploads WHERE opened_from = ?",
                         (upload_id,)).fetchall()
        (details,) = db.execute("SELECT details FROM audit_events WHERE upload_id = ? AND "
                                "action = 'client:upload:opened_with_password'",
                                (upload_id,)).fetchone()
    assert sorted(d for _, d, _ in got) == sorted(hashlib.sha256(b).hexdigest()
                                                  for b in files.values())
    assert sorted(n for _, _, n in got) == ["名簿.csv", "扶養.csv"]
    assert json.loads(details)["resumed_after"] == 2
    for new_id, _, _ in got:
        assert stack.wait_for(token, new_id, {"clean", "infected", "refused"})[
            "status"] == "clean"
    state = row(stack, upload_id)
    assert state["dropzone_key"] is None and state["unlock_until"] is None
    check_invariants(stack, digests=[hashlib.sha256(b).hexdigest() for b in files.values()])


@embedded_only("searches the instance's files; the scale profile keeps state in services")
def test_typed_passwords_are_nowhere(stack: Stack) -> None:
    """After the tests above: no typed password in the DB, queue, logs or storage."""
    needles = [p.encode(enc) for p in (RIGHT, WRONG) for enc in ("utf-8", "utf-16-le")]
    needles += [WRONG.encode() + str(i).encode() for i in range(1, 6)]
    searched = 0
    for path in stack.base.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 256 << 20:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        searched += 1
        for needle in needles:
            assert needle not in data, f"a typed password is in {path}"
    assert searched > 5
    with stack.db() as db:
        details = " ".join(str(r[0]) for r in db.execute(
            "SELECT details FROM audit_events").fetchall())
    assert RIGHT not in details and WRONG not in details
