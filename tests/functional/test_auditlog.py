"""The handling log over real HTTPS and the real CLI: search, exports, incidents.

A planted upload carries a My-Number-shaped run in its file name and
another in its content; neither may appear in any export.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from .harness import Stack, csrf_from

JST = ZoneInfo("Asia/Tokyo")
NAME_NUMBER = "123456789018"
CONTENT_NUMBER = "987654321098"
PLANTED_NAME = f"社員名簿_{NAME_NUMBER}.csv"
NASTY = '=HYPERLINK("http://x")'
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Planted:
    upload_id: str
    started: datetime  # JST


@pytest.fixture(scope="module")
def planted(stack: Stack, acme_token: str) -> Planted:
    started = datetime.now(JST) - timedelta(minutes=1)
    data = f"氏名,個人番号\n山田太郎,{CONTENT_NUMBER}\n".encode()
    r = stack.api_upload(acme_token, data, PLANTED_NAME)
    assert r.status_code == 201, r.text
    upload_id = r.json()["id"]
    stack.wait_for(acme_token, upload_id, {"clean", "vaulted"})
    # CLI actions are logged under $USER: a value a person chose, here formulas.
    for user in (NASTY, "+cmd"):
        stack.kinko("token", "add", "acme", "hr", env={**stack.env, "USER": user})
    return Planted(upload_id, started)


@pytest.fixture
def boss(stack: Stack) -> requests.Session:
    return stack.office("boss")


def assert_clean(blob: bytes) -> None:
    """No planted number and no file name, in any encoding we write."""
    for needle in (NAME_NUMBER, CONTENT_NUMBER, "社員名簿", "山田"):
        assert needle.encode() not in blob, needle


def csv_rows(data: bytes) -> list[dict[str, str]]:
    assert data.startswith("\ufeff".encode()), data[:20]
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def results(html: str) -> str:
    """The result rows of the log page (the form lists every tag, so skip it)."""
    if "<tbody>" not in html:
        return ""
    return html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]


def test_search_by_action_and_by_upload(stack: Stack, planted: Planted,
                                        boss: requests.Session) -> None:
    r = boss.get(stack.office_url + "/audit", params={"action": "client:upload:received"})
    assert r.status_code == 200
    assert planted.upload_id in results(r.text)
    assert "system:scan:clean" not in results(r.text)
    r = boss.get(stack.office_url + "/audit", params={"upload": planted.upload_id})
    assert r.status_code == 200
    rows = results(r.text)
    assert "client:upload:received" in rows and "system:scan:clean" in rows
    assert "office:session:login" not in rows
    assert NAME_NUMBER not in r.text and CONTENT_NUMBER not in r.text
    # Filters combine: the upload is acme's, so nothing for beta.
    r = boss.get(stack.office_url + "/audit", params={
        "upload": planted.upload_id, "company": "beta"})
    assert results(r.text) == ""
    # A JST time window that ends before the upload finds nothing of it.
    before = planted.started - timedelta(hours=2)
    r = boss.get(stack.office_url + "/audit", params={
        "upload": planted.upload_id, "to": before.date().isoformat(),
        "to_time": before.strftime("%H:%M")})
    assert results(r.text) == ""
    r = boss.get(stack.office_url + "/audit", params={
        "upload": planted.upload_id, "from": planted.started.date().isoformat(),
        "from_time": planted.started.strftime("%H:%M")})
    assert "system:scan:clean" in results(r.text)


def test_a_handler_gets_403(stack: Stack) -> None:
    hana = stack.office("hana")
    for path in ("/audit", "/audit/export.csv", "/audit/export.jsonl", "/audit/incident"):
        r = hana.get(stack.office_url + path, allow_redirects=False)
        assert r.status_code == 403, (path, r.status_code)
    assert "/audit" not in hana.get(stack.office_url + "/").text


def test_csv_export_has_bom_and_neutralised_cells(stack: Stack, planted: Planted,
                                                  boss: requests.Session) -> None:
    r = boss.get(stack.office_url + "/audit/export.csv")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    assert_clean(r.content)
    rows = csv_rows(r.content)
    labels = {row["actor_label"] for row in rows}
    assert "'" + NASTY in labels and "'+cmd" in labels
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(FORMULA_START), cell
    assert planted.upload_id in {row["upload_id"] for row in rows}
    # The filters apply to exports too.
    r = boss.get(stack.office_url + "/audit/export.csv", params={"upload": planted.upload_id})
    assert {row["upload_id"] for row in csv_rows(r.content)} == {planted.upload_id}


def test_jsonl_export_keeps_raw_values(stack: Stack, planted: Planted,
                                       boss: requests.Session) -> None:
    r = boss.get(stack.office_url + "/audit/export.jsonl")
    assert r.status_code == 200
    assert_clean(r.content)
    lines = [json.loads(x) for x in r.content.decode().splitlines()]
    assert NASTY in {x["actor_label"] for x in lines}
    assert all(len(x["hash"]) == 64 and len(x["prev_hash"]) == 64 for x in lines)
    # Exports are themselves logged (the earlier CSV export is in this one).
    exported = [x for x in lines if x["action"] == "office:audit:exported"]
    assert exported and json.loads(exported[-1]["details"])["format"] == "csv"


def test_incident_zip(stack: Stack, planted: Planted, boss: requests.Session) -> None:
    page = boss.get(stack.office_url + "/audit/incident")
    assert page.status_code == 200
    start, end = planted.started - timedelta(minutes=5), datetime.now(JST) + timedelta(minutes=2)
    r = boss.post(stack.office_url + "/audit/incident", data={
        "csrf_token": csrf_from(page.text),
        "from": start.date().isoformat(), "from_time": start.strftime("%H:%M"),
        "to": end.date().isoformat(), "to_time": end.strftime("%H:%M")})
    assert r.status_code == 200, r.text[:500]
    assert r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == sorted(
            ["events.csv", "events.jsonl", "touched.csv", "touched.json", "summary.txt"])
        for name in zf.namelist():
            assert_clean(zf.read(name))
        touched = csv_rows(zf.read("touched.csv"))
        assert planted.upload_id in {row["upload_id"] for row in touched}
        assert planted.upload_id in zf.read("summary.txt").decode()
        doc = json.loads(zf.read("touched.json"))
        assert "acme" in {c["code"] for c in doc["companies"]}
    # A window that ends before it started is refused kindly.
    page = boss.get(stack.office_url + "/audit/incident")
    r = boss.post(stack.office_url + "/audit/incident", data={
        "csrf_token": csrf_from(page.text), "from": end.date().isoformat(),
        "from_time": end.strftime("%H:%M"), "to": start.date().isoformat(),
        "to_time": start.strftime("%H:%M")})
    assert r.status_code == 400


def test_cli_export_and_incident(stack: Stack, planted: Planted, tmp_path: Path) -> None:
    today = datetime.now(JST).date().isoformat()
    out = tmp_path / "audit.csv"
    proc = stack.kinko("audit", "export", "--format", "csv", "--from", today, "-o", str(out))
    assert "events written" in proc.stdout
    data = out.read_bytes()
    assert_clean(data)
    rows = csv_rows(data)
    assert planted.upload_id in {row["upload_id"] for row in rows}
    assert "'" + NASTY in {row["actor_label"] for row in rows}
    out = tmp_path / "audit.jsonl"
    stack.kinko("audit", "export", "--format", "jsonl", "--to", today, "-o", str(out))
    data = out.read_bytes()
    assert_clean(data)
    assert planted.upload_id in data.decode()
    future = (datetime.now(JST) + timedelta(days=2)).date().isoformat()
    stack.kinko("audit", "export", "--format", "jsonl", "--from", future, "-o", str(out))
    assert out.read_bytes() == b""
    bad = stack.kinko("audit", "export", "--format", "csv", "--from", "soon", "-o", str(out),
                      check=False)
    assert bad.returncode != 0 and "kinko:" in bad.stderr

    start = (planted.started - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    end = (datetime.now(JST) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M")
    inc = tmp_path / "incident"
    proc = stack.kinko("audit", "incident", "--from", start, "--to", end, "--company", "acme",
                       "-o", str(inc))
    assert "incident:" in proc.stdout
    assert sorted(p.name for p in inc.iterdir()) == sorted(
        ["events.csv", "events.jsonl", "touched.csv", "touched.json", "summary.txt"])
    for p in inc.iterdir():
        assert_clean(p.read_bytes())
    assert planted.upload_id in (inc / "touched.csv").read_text(encoding="utf-8-sig")
    doc = json.loads((inc / "touched.json").read_text())
    assert doc["filters"]["company"] == "acme"
    assert {c["code"] for c in doc["companies"]} == {"acme"}
    # An actor that did nothing: an empty but complete incident.
    inc2 = tmp_path / "nobody"
    stack.kinko("audit", "incident", "--from", start, "--to", end, "--actor", "nobody",
                "-o", str(inc2))
    assert json.loads((inc2 / "touched.json").read_text())["events"] == 0


def test_chain_still_verifies(stack: Stack, planted: Planted) -> None:
    proc = stack.kinko("audit", "verify")
    assert "intact" in proc.stdout
