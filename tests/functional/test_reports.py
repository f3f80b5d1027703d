"""The handling ledger and the monthly usage report over the real stack:
CLI, office console and the client's room."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pypdf

from .harness import Stack, csrf_from
from .test_chain import office_download

NUMBER = "123456789018"


def pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF"), data[:40]
    text = "\n".join(p.extract_text() or "" for p in pypdf.PdfReader(io.BytesIO(data)).pages)
    return text.replace("\n", "")


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(data[3:].decode("utf-8"))))


def test_reports_and_ledger_list_the_months_activity(stack: Stack) -> None:
    code = "rep" + uuid.uuid4().hex[:8]
    name = "報告テスト株式会社"
    stack.kinko("company", "add", code, "--name", name)
    stack.kinko("user", "add", code, "hr", "--password", f"{code}-Passw0rd")
    token = stack.token(code, "hr")
    data = ("氏名,個人番号\n" + f"山田太郎,{NUMBER}\n" + f"# {uuid.uuid4()}\n").encode()
    r = stack.api_upload(token, data, f"山田_{NUMBER}.csv", purpose="koyo")
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    assert stack.wait_for(token, upload_id, {"clean", "infected", "refused"})["status"] == "clean"
    stack.kinko("vault", "pull", upload_id, "--staff", "boss")
    stack.wait_for(token, upload_id, {"vaulted"})
    office = stack.office("boss")
    r = office_download(stack, office, "boss", upload_id)
    assert r.status_code == 200 and r.content == data
    month = datetime.now(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m")

    # CLI: the month's report lists the upload received and used, and nothing else.
    out = stack.base / f"{code}.pdf"
    stack.kinko("report", "monthly", code, month, "-o", str(out))
    text = pdf_text(out.read_bytes())
    assert "利用記録レポート" in text and name in text and upload_id in text
    assert NUMBER not in text
    out_csv = stack.base / f"{code}.csv"
    stack.kinko("report", "monthly", code, month, "-o", str(out_csv))
    raw = out_csv.read_bytes()
    rows = csv_rows(raw)[1:]
    assert [r[2] for r in rows] == [upload_id, upload_id]  # received, then used
    assert rows[0][3] == "山田_************.csv"
    assert rows[1][5] == "boss" and rows[1][4] == "雇用保険届出"
    assert NUMBER.encode() not in raw

    # CLI: the ledger.
    ledger_pdf = stack.base / f"{code}-ledger.pdf"
    stack.kinko("ledger", code, "-o", str(ledger_pdf))
    text = pdf_text(ledger_pdf.read_bytes())
    assert "特定個人情報管理台帳" in text and name in text and NUMBER not in text
    ledger_csv = stack.base / f"{code}-ledger.csv"
    stack.kinko("ledger", code, "-o", str(ledger_csv))
    raw = ledger_csv.read_bytes()
    rows = csv_rows(raw)
    assert len(rows) == 2 and rows[1][:3] == ["csv", "雇用保険届出", "1"]
    assert NUMBER.encode() not in raw and "山田".encode() not in raw

    # Office: generate the month now; a handler of another company sees nothing.
    page = office.get(f"{stack.office_url}/companies/{code}/reports")
    assert page.status_code == 200
    r = office.post(f"{stack.office_url}/companies/{code}/reports/close",
                    data={"csrf_token": csrf_from(page.text), "month": month},
                    allow_redirects=False)
    assert r.status_code == 303
    page = office.get(f"{stack.office_url}/companies/{code}/reports")
    assert month in page.text
    r = office.get(f"{stack.office_url}/companies/{code}/ledger.pdf")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/pdf"
    hana = stack.office("hana")  # handler of acme only
    assert hana.get(f"{stack.office_url}/companies/{code}/reports").status_code == 404
    assert hana.get(f"{stack.office_url}/companies/{code}/ledger.csv").status_code == 404

    # Client: the room lists the month; both documents download and parse.
    client = stack.client(code, "hr", f"{code}-Passw0rd")
    page = client.get(stack.client_url + "/reports")
    assert page.status_code == 200 and month in page.text
    r = client.get(f"{stack.client_url}/reports/{month}.pdf")
    assert r.status_code == 200
    text = pdf_text(r.content)
    assert "利用記録レポート" in text and upload_id in text and NUMBER not in text
    r = client.get(f"{stack.client_url}/reports/{month}.csv")
    assert r.status_code == 200
    assert [row[2] for row in csv_rows(r.content)[1:]] == [upload_id, upload_id]
    assert client.get(f"{stack.client_url}/reports/2001-01.pdf").status_code == 404
    assert client.get(f"{stack.client_url}/reports/garbage.pdf").status_code == 404
    assert client.get(f"{stack.client_url}/reports/{month}.txt").status_code == 404

    # Another company's client never reaches this company's report.
    beta = stack.client("beta", "hr", "beta-Passw0rd")
    listing = beta.get(stack.client_url + "/reports")
    assert listing.status_code == 200 and name not in listing.text
    r = beta.get(f"{stack.client_url}/reports/{month}.pdf")
    if r.status_code == 200:  # beta's own month, if some other test closed it
        assert upload_id not in pdf_text(r.content) and name not in pdf_text(r.content)
    else:
        assert r.status_code == 404
