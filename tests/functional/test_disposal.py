"""Disposal (廃棄) over the real stack: a handler proposes, a different person
who is a manager approves with a fresh TOTP code; the object, its versions and
its key are gone, an old copy no longer decrypts, the client sees `disposed`,
and the certificate names the company but carries no number or file name."""

from __future__ import annotations

import io
import re
import secrets
import uuid

import pytest
import requests
from pypdf import PdfReader

from scanners.mynumber import check_digit
from storage.envelope import open_envelope
from storage.errors import StorageError
from storage.keys import VaultPrivateKey

from .harness import Stack, csrf_from

TWELVE = re.compile(r"(?<!\d)\d{12}(?!\d)")


def my_number() -> str:
    first = "".join(secrets.choice("0123456789") for _ in range(11))
    return first + str(check_digit(first))


def audit_actions(stack: Stack, upload_id: str) -> list[str]:
    with stack.db() as db:
        return [r[0] for r in db.execute(
            "SELECT action FROM audit_events WHERE upload_id = ? ORDER BY id", (upload_id,))]


def upload_row(stack: Stack, upload_id: str) -> tuple[str, bytes | None, str | None]:
    with stack.db() as db:
        return db.execute("SELECT status, vault_wrapped_key, vault_key FROM uploads "
                          "WHERE id = ?", (upload_id,)).fetchone()


def vaulted(stack: Stack, token: str, number: str) -> tuple[str, str]:
    name = f"退職者_{number}.csv"
    data = (f"氏名,個人番号\n山田太郎,{number}\n# {uuid.uuid4()}\n").encode()
    r = stack.api_upload(token, data, name)
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    assert stack.wait_for(token, upload_id, {"clean", "infected", "refused"})["status"] == "clean"
    stack.kinko("vault", "pull", upload_id, "--staff", "boss")
    stack.wait_for(token, upload_id, {"vaulted"})
    return upload_id, name


def post(stack: Stack, office: requests.Session, upload_id: str, action: str,
         **data: str) -> requests.Response:
    page = office.get(f"{stack.office_url}/uploads/{upload_id}")
    assert page.status_code == 200
    return office.post(f"{stack.office_url}/uploads/{upload_id}/disposal/{action}",
                       data={"csrf_token": csrf_from(page.text), **data},
                       allow_redirects=False)


def pdf_text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF")
    return "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)


def assert_clean_certificate(text: str, upload_id: str, number: str, name: str) -> None:
    assert "株式会社アクメ" in text
    assert "廃棄証明書" in text
    assert number not in text and name not in text and "退職者" not in text
    assert not TWELVE.search(text.replace(upload_id, "")), "a 12-digit run in the certificate"


def test_a_manager_other_than_the_proposer_disposes_with_a_fresh_code(
        stack: Stack, acme_token: str) -> None:
    number = my_number()
    upload_id, name = vaulted(stack, acme_token, number)
    [obj] = stack.objects("vault", f"vault/{upload_id}.")
    backup = obj.read_bytes()  # an "old backup" of the vault object
    object_id = stack.object_id("vault", obj)

    hana = stack.office("hana")
    r = post(stack, hana, upload_id, "propose", reason="保管期限満了のため")
    assert r.status_code == 303
    assert "office:disposal:proposed" in audit_actions(stack, upload_id)

    # The proposer may not approve (and a handler may not either).
    r = post(stack, hana, upload_id, "approve", code=stack.totps["hana"].code())
    assert r.status_code == 303
    assert upload_row(stack, upload_id)[0] == "vaulted"

    # A manager without a fresh code is refused, and it is recorded.
    boss = stack.office("boss")
    for code in ("", "000000"):
        r = post(stack, boss, upload_id, "approve", code=code)
        assert r.status_code == 303
    status, wrapped, _key = upload_row(stack, upload_id)
    assert status == "vaulted" and wrapped is not None
    assert audit_actions(stack, upload_id).count("office:disposal:refused") == 3

    r = post(stack, boss, upload_id, "approve", code=stack.totps["boss"].code())
    assert r.status_code == 303

    status, wrapped, key = upload_row(stack, upload_id)
    assert (status, wrapped, key) == ("disposed", None, None)
    assert stack.objects("vault", f"vault/{upload_id}") == []
    assert stack.objects("dropzone", f"dz/{upload_id}") == []
    with pytest.raises(StorageError):  # the backup's key existed only in the row
        open_envelope(io.BytesIO(backup), object_id,
                      unwrapper=VaultPrivateKey.load(stack.home / "keys" / "vault.key"),
                      wrapped_key=None).read()
    body = stack.status(acme_token, upload_id)
    assert body["status"] == "disposed"
    assert [e["status"] for e in body["events"]][-1] == "disposed"
    actions = audit_actions(stack, upload_id)
    for expected in ("office:file:disposed", "office:disposal:approved"):
        assert expected in actions

    # The certificate: from the list page, as a PDF attachment, audited.
    listing = boss.get(f"{stack.office_url}/disposal")
    assert listing.status_code == 200
    with stack.db() as db:
        record_id, reason = db.execute("SELECT id, reason FROM disposal_records "
                                       "WHERE upload_id = ?", (upload_id,)).fetchone()
        stored = " ".join(str(v) for v in db.execute(
            "SELECT * FROM disposal_records WHERE id = ?", (record_id,)).fetchone())
    assert reason == "保管期限満了のため" and number not in stored and "退職者" not in stored
    assert f"/disposal/{record_id}/certificate.pdf" in listing.text
    page = boss.get(f"{stack.office_url}/uploads/{upload_id}")
    assert page.status_code == 200 and number not in page.text
    assert f"/disposal/{record_id}/certificate.pdf" in page.text
    for who in (boss, hana):
        r = who.get(f"{stack.office_url}/disposal/{record_id}/certificate.pdf")
        assert r.status_code == 200, r.text[:300]
        assert r.headers["Content-Type"] == "application/pdf"
        assert r.headers["Content-Disposition"].startswith("attachment")
        assert_clean_certificate(pdf_text(r.content), upload_id, number, name)
    assert "office:certificate:issued" in audit_actions(stack, upload_id)
    assert hana.get(f"{stack.office_url}/disposal/999999/certificate.pdf").status_code == 404

    assert audit_actions(stack, upload_id).count("office:file:disposed") == 1
    stack.kinko("audit", "verify")


def test_disposal_by_the_command_line(stack: Stack, acme_token: str) -> None:
    number = my_number()
    upload_id, name = vaulted(stack, acme_token, number)
    r = stack.kinko("disposal", "approve", upload_id, "--staff", "boss", check=False)
    assert r.returncode != 0 and "not_proposed" in r.stderr

    stack.kinko("disposal", "propose", upload_id, "--staff", "boss",
                "--reason", "従業員の退職のため")
    for login, why in (("boss", "same_person"), ("hana", "not_manager")):
        r = stack.kinko("disposal", "approve", upload_id, "--staff", login, check=False)
        assert r.returncode != 0, r.stdout
        assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert upload_row(stack, upload_id)[0] == "vaulted"

    second = f"mgr{secrets.token_hex(3)}"
    stack.add_staff(second, "manager")
    r = stack.kinko("disposal", "approve", upload_id, "--staff", second)
    assert "disposed" in r.stdout
    assert upload_row(stack, upload_id) == ("disposed", None, None)
    assert stack.objects("vault", f"vault/{upload_id}") == []
    assert stack.status(acme_token, upload_id)["events"][-1]["status"] == "disposed"

    out = stack.base / f"cert-{upload_id}.pdf"
    stack.kinko("disposal", "certificate", upload_id, "-o", str(out))
    try:
        assert_clean_certificate(pdf_text(out.read_bytes()), upload_id, number, name)
    finally:
        out.unlink()
    r = stack.kinko("disposal", "certificate", "no-such-upload", "-o", str(out), check=False)
    assert r.returncode != 0 and not out.exists()
