"""Check-digit report over the real stack: counts and cells, never the digits."""

from __future__ import annotations

import json
import re
import uuid

import requests

from scanners.mynumber import check_digit

from .harness import Stack


def numbers() -> tuple[list[str], list[str]]:
    firsts = ["12345678901", "98765432109", "31415926535", "27182818284", "16180339887"]
    valid = [f + str(check_digit(f)) for f in firsts]
    invalid = [v[:11] + str((int(v[11]) + 1) % 10) for v in valid[3:]]
    return valid[:3], invalid


def test_csv_check_digit_report_names_cells_not_digits(stack: Stack, acme_token: str) -> None:
    valid, invalid = numbers()
    rows = [
        "氏名,個人番号,備考",
        f"社員A,{valid[0]},",
        f"社員B,{invalid[0][:4]}-{invalid[0][4:8]}-{invalid[0][8:]},",
        f"社員C,{valid[1][:4]} {valid[1][4:8]} {valid[1][8:]},",
        f"社員D,,{invalid[1]}",
        f"社員E,{valid[2]},{uuid.uuid4()}",
    ]
    data = ("\n".join(rows) + "\n").encode("utf-8")
    r = stack.api_upload(acme_token, data, "番号確認.csv", purpose="koyo")
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    body = stack.wait_for(acme_token, upload_id, {"clean", "infected", "refused"})
    assert body["status"] == "clean", body

    raw = stack.status(acme_token, upload_id)
    report = raw["mynumber"]
    assert report["found"] == 5
    cells = sorted((c["sheet"], c["row"], c["column"]) for c in report["invalid"])
    assert cells == [("", 3, "B"), ("", 5, "C")]
    # The id and the SHA-256 are hex and may hold a 12-digit run by chance.
    text = json.dumps({k: v for k, v in raw.items() if k not in ("id", "sha256")},
                      ensure_ascii=False)
    assert not re.search(r"[0-9]{12}", text)
    for n in valid + invalid:
        assert n not in text

    listed = [u for u in requests.get(
        f"{stack.client_url}/api/v1/uploads", headers={"Authorization": f"Bearer {acme_token}"},
        verify=stack.cert, timeout=30).json()["uploads"] if u["id"] == upload_id]
    assert listed and listed[0]["mynumber"]["found"] == 5


def test_office_page_shows_the_same_cells(stack: Stack, acme_token: str) -> None:
    valid, invalid = numbers()
    data = f"番号\n{valid[0]}\n{invalid[0]}\n".encode()
    r = stack.api_upload(acme_token, data, "office.csv", purpose="koyo")
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    assert stack.wait_for(acme_token, upload_id, {"clean", "refused"})["status"] == "clean"
    office = stack.office("boss")
    page = office.get(f"{stack.office_url}/uploads/{upload_id}")
    assert page.status_code == 200
    section = page.text.split('id="mynumber-check"', 1)[1].split("</section>", 1)[0]
    assert "<td>3</td><td>A</td>" in section
    assert not re.search(r"[0-9]{12}", section)


def test_the_client_sees_the_cells_too(stack: Stack, acme_token: str) -> None:
    from scanners.mynumber import check_digit

    good = "10000000000" + str(check_digit("10000000000"))
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    csv = f"a,b\nx,{good}\ny,{bad}\n".encode()
    up = stack.api_upload(acme_token, csv, "check.csv").json()
    stack.wait_for(acme_token, up["id"], {"clean"})
    page = stack.client("acme", "hr", "acme-Passw0rd").get(
        f"{stack.client_url}/uploads/{up['id']}").text
    assert 'id="mynumber-check"' in page
    assert good not in page and bad not in page
