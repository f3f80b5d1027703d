"""The handling log is tamper-evident, and a planted My Number appears in no
log, export, report, receipt, ledger or notice (searched, all of them)."""

from __future__ import annotations

import shutil
import sqlite3
import zipfile
from pathlib import Path

import pytest
import requests

from scanners.mynumber import check_digit

from .harness import Stack, csrf_from, embedded_only
from .test_chain import office_download


def valid_number(prefix: str) -> str:
    return prefix + str(check_digit(prefix))


@pytest.fixture
def log_copy(stack: Stack, tmp_path: Path) -> Path:
    """A copy of the instance database to tamper with (the live one stays intact)."""
    for _ in range(12):  # enough events to tamper in the middle of, whatever ran before
        stack.kinko("token", "add", "acme", "hr")
    copy = tmp_path / "kinko.db"
    with sqlite3.connect(stack.home / "kinko.db") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


def verify(stack: Stack, db: Path) -> tuple[int, str]:
    env = dict(stack.env, KINKO_DATABASE_URL=f"sqlite:///{db}")
    r = stack.kinko("audit", "verify", env=env, check=False)
    return r.returncode, r.stdout + r.stderr


def middle_id(db: Path) -> int:
    with sqlite3.connect(db) as c:
        lo, hi = c.execute("SELECT min(id), max(id) FROM audit_events").fetchone()
    assert hi - lo > 10
    return (lo + hi) // 2


COPY_ONLY = embedded_only("tampers with a copy of the SQLite file; on PostgreSQL "
                          "test_postgres.py tampers as the owner role instead")


@COPY_ONLY
def test_a_clean_log_verifies(stack: Stack, log_copy: Path) -> None:
    code, out = verify(stack, log_copy)
    assert code == 0 and "intact" in out


@COPY_ONLY
@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "reorder"])
def test_every_kind_of_tampering_is_found(stack: Stack, log_copy: Path, tamper: str) -> None:
    k = middle_id(log_copy)
    with sqlite3.connect(log_copy) as c:
        if tamper == "edit":
            c.execute("UPDATE audit_events SET remote_addr = '203.0.113.9' WHERE id = ?", (k,))
        elif tamper == "delete":
            c.execute("DELETE FROM audit_events WHERE id = ?", (k,))
        elif tamper == "insert":
            row = c.execute("SELECT at, action, actor_kind, actor_id, actor_label, company_id, "
                            "upload_id, remote_addr, details, prev_hash FROM audit_events "
                            "WHERE id = ?", (k,)).fetchone()
            c.execute("UPDATE audit_events SET id = id + 1000000 WHERE id >= ?", (k,))
            c.execute("INSERT INTO audit_events (id, at, action, actor_kind, actor_id, "
                      "actor_label, company_id, upload_id, remote_addr, details, prev_hash, "
                      "hash) VALUES (?, ?, 'office:file:downloaded', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (k, row[0], *row[2:], "f" * 64))
        else:  # swap the contents of two neighbours, each keeping its own hash
            cols = [d[1] for d in c.execute("PRAGMA table_info(audit_events)")][1:]
            a = c.execute(f"SELECT {', '.join(cols)} FROM audit_events WHERE id = ?",  # noqa: S608
                          (k,)).fetchone()
            b = c.execute(f"SELECT {', '.join(cols)} FROM audit_events WHERE id = ?",  # noqa: S608
                          (k + 1,)).fetchone()
            sets = ", ".join(f"{col} = ?" for col in cols)
            c.execute("UPDATE audit_events SET hash = 'swapping' WHERE id = ?", (k,))
            c.execute(f"UPDATE audit_events SET {sets} WHERE id = ?", (*a, k + 1))  # noqa: S608
            c.execute(f"UPDATE audit_events SET {sets} WHERE id = ?", (*b, k))  # noqa: S608
    code, out = verify(stack, log_copy)
    assert code != 0, out
    assert "broken at event" in out and len(out.strip().splitlines()) == 1


def test_a_planted_number_is_nowhere(stack: Stack, acme_token: str, tmp_path: Path) -> None:
    in_content = valid_number("98765432109")
    in_name = valid_number("12345678901")
    csv = f"氏名,個人番号\n山田太郎,{in_content}\n".encode()
    up = stack.api_upload(acme_token, csv, f"山田太郎_{in_name}.csv").json()
    stack.wait_for(acme_token, up["id"], {"clean"})
    stack.kinko("vault", "pull", up["id"], "--staff", "boss")
    office = stack.office("boss")
    assert office_download(stack, office, "boss", up["id"]).content == csv
    env = dict(stack.env, KINKO_NOTICE_BATCH_MINUTES="0")
    stack.kinko("notices", "run", env=env)

    out = tmp_path / "out"
    out.mkdir()
    month = __import__("datetime").datetime.now().strftime("%Y-%m")
    stack.kinko("audit", "export", "--format", "csv", "-o", str(out / "log.csv"))
    stack.kinko("audit", "export", "--format", "jsonl", "-o", str(out / "log.jsonl"))
    stack.kinko("audit", "incident", "--from", "2000-01-01", "--to", "2100-01-01",
                "-o", str(out / "incident"))
    stack.kinko("report", "monthly", "acme", month, "-o", str(out / "monthly.pdf"))
    stack.kinko("report", "monthly", "acme", month, "-o", str(out / "monthly.csv"))
    stack.kinko("ledger", "acme", "-o", str(out / "ledger.pdf"))
    stack.kinko("ledger", "acme", "-o", str(out / "ledger.csv"))
    receipt = requests.get(f"{stack.client_url}/api/v1/uploads/{up['id']}/receipt",
                           headers={"Authorization": f"Bearer {acme_token}"},
                           verify=stack.cert, timeout=30)
    assert receipt.status_code == 200
    (out / "receipt.pdf").write_bytes(receipt.content)
    page = office.get(f"{stack.office_url}/audit?upload={up['id']}")
    z = office.post(f"{stack.office_url}/audit/incident",
                    data={"csrf_token": csrf_from(page.text), "from": "2000-01-01",
                          "to": "2100-01-01"})
    if z.status_code == 200 and z.content[:2] == b"PK":
        with zipfile.ZipFile(__import__("io").BytesIO(z.content)) as zf:
            zf.extractall(out / "incident-web")
    shutil.copytree(stack.home / "outbox", out / "outbox", dirs_exist_ok=True)
    shutil.copy(stack.base / "serve.log", out / "serve.log")
    with stack.db() as c:
        (out / "audit_rows.txt").write_text("\n".join(
            " ".join(map(str, r)) for r in c.execute("SELECT * FROM audit_events")))

    texts = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".pdf":
            from pypdf import PdfReader
            data += "".join(pg.extract_text() or "" for pg in PdfReader(path).pages).encode()
        texts.append((path, data))
    assert len(texts) >= 12
    for path, data in texts:
        for number in (in_content, in_name):
            assert number.encode() not in data, (number, path)
        # File names (often employee names) stay out of logs, exports and notices;
        # the client's own receipt and reports show them, with numbers masked.
        if path.suffix not in (".pdf",) and not path.name.startswith(("monthly", "ledger")):
            assert "山田太郎".encode() not in data, path
