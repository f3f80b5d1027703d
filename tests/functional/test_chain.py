"""The chain end to end over real HTTPS with a real clamd:
upload → scan → pull into the vault → download, byte for byte."""

from __future__ import annotations

import io
import os
import uuid
import zipfile

import openpyxl
import requests

from .harness import Stack, csrf_from, eicar


def make_xlsx(marker: str, extra: dict[str, bytes] | None = None) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["氏名", "個人番号", "メモ"])
    for i in range(50):
        ws.append([f"社員{i}", f"{100000000000 + i}", marker])
    buf = io.BytesIO()
    wb.save(buf)
    if not extra:
        return buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        for name, data in extra.items():
            dst.writestr(name, data)
    return out.getvalue()


def audit_actions(stack: Stack, upload_id: str) -> list[str]:
    with stack.db() as db:
        return [r[0] for r in db.execute(
            "SELECT action FROM audit_events WHERE upload_id = ? ORDER BY id", (upload_id,))]


def office_download(stack: Stack, office: requests.Session, login: str, upload_id: str,
                    purpose: str = "koyo") -> requests.Response:
    page = office.get(f"{stack.office_url}/uploads/{upload_id}")
    assert page.status_code == 200
    return office.post(f"{stack.office_url}/uploads/{upload_id}/download", data={
        "csrf_token": csrf_from(page.text), "purpose": purpose,
        "code": stack.totps[login].code()}, allow_redirects=False)


def test_clean_csv_by_api_and_xlsx_by_form_reach_the_vault_and_come_back(
        stack: Stack, acme_token: str) -> None:
    csv = ("氏名,個人番号\n" + "".join(f"社員{i},{123456789000 + i}\n" for i in range(2000))
           + f"# {uuid.uuid4()}\n").encode("utf-8")
    r = stack.api_upload(acme_token, csv, "社員一覧.csv", purpose="koyo")
    assert r.status_code == 201, r.text
    csv_up = r.json()
    assert csv_up["status"] == "received" and csv_up["size"] == len(csv)
    assert len(csv_up["sha256"]) == 64

    xlsx = make_xlsx(str(uuid.uuid4()))
    client = stack.client("acme", "hr", "acme-Passw0rd")
    r = stack.form_upload(client, xlsx, "扶養控除申告書.xlsx", purpose="gensen")
    assert r.status_code == 303, r.text
    xlsx_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[-1]

    for upload_id in (csv_up["id"], xlsx_id):
        body = stack.wait_for(acme_token, upload_id, {"clean", "infected", "refused"})
        assert body["status"] == "clean", body
        assert [e["status"] for e in body["events"]] == ["received", "scanning", "clean"]
    assert stack.status(acme_token, xlsx_id)["kind"] == "xlsx"

    # Pull the CSV from the office app (queued to the worker), the xlsx by CLI.
    office = stack.office("boss")
    page = office.get(f"{stack.office_url}/uploads/{csv_up['id']}")
    r = office.post(f"{stack.office_url}/uploads/{csv_up['id']}/pull",
                    data={"csrf_token": csrf_from(page.text)}, allow_redirects=False)
    assert r.status_code == 303
    stack.kinko("vault", "pull", xlsx_id, "--staff", "boss")
    for upload_id in (csv_up["id"], xlsx_id):
        body = stack.wait_for(acme_token, upload_id, {"vaulted"})
        assert [e["status"] for e in body["events"]][-1] == "vaulted"
        assert stack.objects("dropzone", f"dz/{upload_id}") == []
        assert len(stack.objects("vault", f"vault/{upload_id}.")) == 1

    # Download through the office app (purpose + TOTP) and the CLI.
    r = office_download(stack, office, "boss", csv_up["id"])
    assert r.status_code == 200, r.text[:500]
    assert r.content == csv
    assert "attachment" in r.headers["Content-Disposition"]
    assert "filename*=UTF-8''" in r.headers["Content-Disposition"]
    out = stack.base / "out.xlsx"
    stack.kinko("vault", "get", xlsx_id, "--staff", "boss", "--purpose", "gensen",
                "-o", str(out))
    try:
        assert out.read_bytes() == xlsx
    finally:
        out.unlink()

    # The client sees its files in the vault; every step was audited.
    listed = {u["id"]: u["status"] for u in requests.get(
        f"{stack.client_url}/api/v1/uploads", headers={"Authorization": f"Bearer {acme_token}"},
        verify=stack.cert).json()["uploads"]}
    assert listed[csv_up["id"]] == listed[xlsx_id] == "vaulted"
    actions = audit_actions(stack, csv_up["id"])
    for expected in ("client:upload:received", "system:scan:started", "system:scan:clean",
                     "office:vault:pull_requested", "office:file:vaulted",
                     "system:dropzone:deleted", "office:file:downloaded"):
        assert expected in actions, (expected, actions)
    with stack.db() as db:
        row = db.execute("SELECT actor_kind, actor_label, remote_addr FROM audit_events "
                         "WHERE upload_id = ? AND action = 'office:file:downloaded'",
                         (csv_up["id"],)).fetchone()
        assert row == ("staff", "boss", "127.0.0.1")
        details = " ".join(r[0] for r in db.execute("SELECT details FROM audit_events"))
    assert "社員一覧" not in details and "扶養控除" not in details  # no file names
    stack.kinko("audit", "verify")


def test_download_needs_a_purpose_and_a_fresh_code(stack: Stack, acme_token: str) -> None:
    data = f"a,b\n1,{uuid.uuid4()}\n".encode()
    up = stack.api_upload(acme_token, data, "x.csv").json()
    stack.wait_for(acme_token, up["id"], {"clean"})
    stack.kinko("vault", "pull", up["id"], "--staff", "boss")
    office = stack.office("boss")
    page = office.get(f"{stack.office_url}/uploads/{up['id']}")
    token = csrf_from(page.text)
    url = f"{stack.office_url}/uploads/{up['id']}/download"
    no_purpose = office.post(url, data={"csrf_token": token, "purpose": "",
                                        "code": stack.totps["boss"].code()},
                             allow_redirects=False)
    bad_code = office.post(url, data={"csrf_token": token, "purpose": "koyo", "code": "000000"},
                           allow_redirects=False)
    for r in (no_purpose, bad_code):
        assert r.status_code == 303 and r.headers["Content-Type"].startswith("text/html")
    assert audit_actions(stack, up["id"]).count("office:file:download_refused") == 2
    assert "office:file:downloaded" not in audit_actions(stack, up["id"])


def test_eicar_plain_and_inside_xlsx_is_infected_and_never_vaulted(
        stack: Stack, acme_token: str) -> None:
    plain = stack.api_upload(acme_token, eicar(), "eicar.csv").json()
    inside = stack.api_upload(
        acme_token, make_xlsx(str(uuid.uuid4()), {"xl/media/note.txt": eicar()}),
        "hidden.xlsx").json()
    for up in (plain, inside):
        body = stack.wait_for(acme_token, up["id"], {"clean", "infected", "refused"})
        assert body["status"] == "infected", body
        assert body["reason_code"] == "malware" and body["reason"]
        assert stack.objects("dropzone", f"dz/{up['id']}") == []
        r = stack.kinko("vault", "pull", up["id"], "--staff", "boss", check=False)
        assert r.returncode != 0 and "not_clean" in r.stderr
        assert stack.objects("vault", f"vault/{up['id']}") == []
        assert "system:scan:infected" in audit_actions(stack, up["id"])


def test_clamd_down_keeps_uploads_scanning_until_it_returns(
        stack: Stack, acme_token: str) -> None:
    stack.clamd.stop()
    try:
        data = f"x,y\n{os.urandom(8).hex()},1\n".encode()
        up = stack.api_upload(acme_token, data, "wait.csv").json()
        seen = set()
        import time
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            seen.add(stack.status(acme_token, up["id"])["status"])
            time.sleep(0.3)
        assert seen <= {"received", "scanning"}, seen
        assert "scanning" in seen
        assert "system:scan:deferred" in audit_actions(stack, up["id"])
        office = stack.office("boss")  # the office is told, loudly
        deadline = time.monotonic() + 20
        while "応答していません" not in office.get(stack.office_url + "/").text:
            assert time.monotonic() < deadline, "no 'scanner not answering' banner"
            time.sleep(0.5)
    finally:
        stack.restart_clamd()
    body = stack.wait_for(acme_token, up["id"], {"clean", "infected", "refused"}, timeout=60)
    assert body["status"] == "clean"


def test_office_warns_loudly_when_clamd_has_only_test_signatures(stack: Stack) -> None:
    office = stack.office("boss")
    import time
    deadline = time.monotonic() + 30
    while True:  # the worker probes clamd at start and every minute
        page = office.get(f"{stack.office_url}/").text
        if "ClamAV" in page or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "公式の定義ファイルがありません" in page
    assert "ClamAV 1." in page  # the engine version the worker saw
