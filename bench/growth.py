"""Growth: the pages that list what accumulates, on a grown instance.

A room with 10,000 uploads and a handling log of 1,000,000 events, then the p95
response time of

* the client room list (``GET /`` of the client app: the newest 200 of the room),
* the office inbox (``GET /`` of the office app, all companies, and filtered), and
* the office handling-log search (``GET /audit``) with several filters,

over HTTPS against the real ``kinko serve`` of the bench stack.  The reference is
the p95 of the same pages on the same stack while it is young (250 uploads and
5,000 events: every page already full), measured in the same run just before it
grows.  Target: ratio <= 2 (see docs/performance.md).

Filling: rows are written straight into the stack's SQLite database with
``executemany`` while ``kinko serve`` is stopped (no web request could insert so
many in reasonable time).  The audit events are chained exactly as
``portal.audit.record`` chains them (HMAC with the instance's audit key, after
the existing head), so ``kinko audit verify`` still passes: it is run at the end
and its time is reported (not judged).  The uploads have no stored objects
(``vaulted`` rows name a vault key that is never read): the pages only list rows.

Knobs: ``KINKO_BENCH_GROWTH_UPLOADS`` (10000), ``KINKO_BENCH_GROWTH_EVENTS``
(1000000), ``KINKO_BENCH_GROWTH_REQUESTS`` (requests per page and phase, 30),
``KINKO_BENCH_GROWTH_VERIFY`` (1; 0 skips ``kinko audit verify``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import random
import secrets
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import requests

from bench.common import (
    COMPANY,
    PASSWORD,
    Bench,
    Record,
    bench_stack,
    env_int,
    record,
    report,
    write_results,
)
from portal.audit import canonical
from portal.models import AuditEvent
from portal.services import build_services
from portal.settings import Settings

TARGET = 2.0
SMALL_UPLOADS = 250  # > the room's 200 rows and several inbox pages
SMALL_EVENTS = 5_000  # several log pages for every filter
BATCH = 20_000
ACTIONS = [  # (action, actor kind, weight): roughly the mix a busy office produces
    ("client:upload:received", "client", 10), ("system:scan:started", "system", 10),
    ("system:scan:clean", "system", 9), ("office:file:vaulted", "staff", 6),
    ("system:dropzone:deleted", "system", 9), ("office:vault:pull_requested", "staff", 3),
    ("office:file:downloaded", "staff", 4), ("client:session:login", "client", 6),
    ("office:session:login", "staff", 4), ("office:audit:exported", "staff", 1),
    ("system:notice:sent", "system", 2), ("system:scan:refused", "system", 1),
]


def _pages(company: str, upload_id: str) -> list[tuple[str, str, str]]:
    """(record name, app, path): what an office manager and a client look at."""
    today = datetime.now(UTC).date()
    week = f"from={(today - timedelta(days=7)).isoformat()}&to={today.isoformat()}"
    return [
        ("room", "client", "/"),
        ("inbox", "office", "/"),
        ("inbox.clean", "office", "/?status=clean"),
        ("inbox.company_week", "office", f"/?company={company}&{week}"),
        ("audit", "office", "/audit"),
        ("audit.company", "office", f"/audit?company={company}"),
        ("audit.company_week", "office", f"/audit?company={company}&{week}"),
        ("audit.action", "office", "/audit?action=office:file:"),
        ("audit.actor", "office", "/audit?actor=boss"),
        ("audit.upload", "office", f"/audit?upload={upload_id}"),
        ("audit.addr", "office", "/audit?addr=192.0.2.7"),
    ]


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def measure(bench: Bench, pages: list[tuple[str, str, str]], n: int) -> dict[str, Any]:
    stack = bench.stack
    client = stack.client(COMPANY, "hr", PASSWORD)
    office = stack.office("boss", fresh=True)
    base = {"client": (client, stack.client_url), "office": (office, stack.office_url)}
    out: dict[str, Any] = {}
    for name, app, path in pages:
        session, url = base[app]
        for _ in range(3):  # warm: connection, templates, SQLite page cache
            _get(session, url + path)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            _get(session, url + path)
            times.append(time.perf_counter() - t0)
        out[name] = {"p95": p95(times), "median": sorted(times)[len(times) // 2],
                     "max": max(times)}
    return out


def _get(session: requests.Session, url: str) -> None:
    r = session.get(url, allow_redirects=False, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"GET {url}: {r.status_code}")


# -- filling the database ------------------------------------------------------------


def _db_time(at: datetime) -> str:
    """How SQLAlchemy stores a naive UTC DateTime in SQLite."""
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


def _one(db: sqlite3.Connection, sql: str, *args: Any) -> Any:
    row = db.execute(sql, args).fetchone()
    if row is None:
        raise RuntimeError(f"nothing for {sql}")
    return row[0]


def fill(bench: Bench, uploads: int, events: int, days: int) -> dict[str, Any]:
    """Write the uploads and the events, spread over the last ``days`` days (the
    newest a minute ago); returns counts and seconds.  The server must be stopped."""
    stack = bench.stack
    settings = Settings.from_env(stack.env)
    audit_key = build_services(settings, "worker").audit_key
    db = sqlite3.connect(stack.home / "kinko.db")
    t0 = time.perf_counter()
    try:
        company_id = int(_one(db, "SELECT id FROM companies WHERE code = ?", COMPANY))
        user_id = int(_one(db, "SELECT id FROM client_users WHERE company_id = ?", company_id))
        staff = db.execute("SELECT id, login FROM staff ORDER BY id").fetchall()
        purposes = [r[0] for r in db.execute("SELECT code FROM purposes")]
        span = timedelta(days=days)
        upload_ids = _fill_uploads(db, company_id, user_id, purposes, uploads, span)
        db.commit()
        t_up = time.perf_counter() - t0
        _fill_events(db, audit_key, events, company_id, user_id, staff, upload_ids, span)
        db.commit()
    finally:
        db.close()
    return {"uploads": uploads, "events": events, "uploads_s": t_up,
            "total_s": time.perf_counter() - t0, "sample_upload": upload_ids[len(upload_ids) // 2]}


def _fill_uploads(db: sqlite3.Connection, company_id: int, user_id: int,
                  purposes: list[str], n: int, span: timedelta) -> list[str]:
    end = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
    step = span / n
    rnd = random.Random(8)  # noqa: S311 - a reproducible mix, not a secret
    ids: list[str] = []
    rows, events = [], []
    for i in range(n):
        uid = secrets.token_hex(16)
        ids.append(uid)
        created = end - step * (n - i)
        roll = rnd.random()
        status = ("vaulted" if roll < 0.9 else "clean" if roll < 0.95
                  else "refused" if roll < 0.98 else "infected")
        vaulted = status == "vaulted"
        rows.append({
            "id": uid, "company_id": company_id, "uploaded_by_id": user_id,
            "filename": f"給与データ_{i:05d}.csv", "purpose_code": rnd.choice(purposes),
            "status": status, "reason": None if status in ("vaulted", "clean") else "malware",
            "sniffed": "text", "kind": "csv", "size": rnd.randrange(1_000, 5_000_000),
            "sha256": secrets.token_hex(32), "created_at": _db_time(created),
            "updated_at": _db_time(created + timedelta(seconds=5)),
            "dropzone_key": f"dz/{uid}" if status == "clean" else None, "scan_attempts": 0,
            "scanned_at": _db_time(created + timedelta(seconds=2)),
            "vault_key": f"vault/{uid}.{secrets.token_hex(8)}" if vaulted else None,
            "vault_key_id": "0" * 16 if vaulted else None,
            "vault_wrapped_key": secrets.token_bytes(80) if vaulted else None,
            "vaulted_at": _db_time(created + timedelta(seconds=4)) if vaulted else None,
            "retention_until": (created.date() + timedelta(days=7 * 365)).isoformat()
            if vaulted else None,
        })
        steps = ["received", "scanning", "clean" if status in ("clean", "vaulted") else status]
        if vaulted:
            steps.append("vaulted")
        events += [(uid, s, _db_time(created + timedelta(seconds=k))) for k, s in
                   enumerate(steps)]
    cols = list(rows[0])
    # Column names are the literal keys above, never input.
    db.executemany(f"INSERT INTO uploads ({', '.join(cols)}) VALUES "  # noqa: S608
                   f"({', '.join(':' + c for c in cols)})", rows)
    db.executemany("INSERT INTO upload_events (upload_id, status, at) VALUES (?, ?, ?)", events)
    return ids


def _fill_events(db: sqlite3.Connection, key: bytes, n: int, company_id: int, user_id: int,
                 staff: list[tuple[int, str]], upload_ids: list[str],
                 span: timedelta) -> None:
    head = db.execute("SELECT hash, at FROM audit_events ORDER BY id DESC LIMIT 1").fetchone()
    prev = head[0] if head else "0" * 64
    # After the existing head, in time order within one fill, the last one a
    # minute ago.  (A second fill's events are newer by id, not all by time:
    # the chain and the pages go by id.)
    end = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
    step = span / n
    start = end - step * n
    rnd = random.Random(9)  # noqa: S311 - a reproducible mix, not a secret
    weights = [w for _, _, w in ACTIONS]
    others = list(range(1000, 1020))  # other companies' events (no row needed: no FK)
    addrs = [f"192.0.2.{i}" for i in range(1, 60)] + [f"198.51.100.{i}" for i in range(1, 60)]
    for first in range(0, n, BATCH):
        rows = []
        for i in range(first, min(n, first + BATCH)):
            action, kind, _ = rnd.choices(ACTIONS, weights)[0]
            mine = rnd.random() < 0.05
            co = company_id if mine else rnd.choice(others)
            if kind == "staff":
                sid, label = rnd.choice(staff)
                actor_id: int | None = sid
            elif kind == "client":
                actor_id, label = (user_id, "hr") if mine else (rnd.randrange(2000, 3000), "hr")
            else:
                actor_id, label = None, "worker"
            ev = SimpleNamespace(
                at=start + step * i,
                action=action, actor_kind=kind, actor_id=actor_id, actor_label=label,
                company_id=co, upload_id=rnd.choice(upload_ids) if mine else secrets.token_hex(16),
                remote_addr=None if kind == "system" else rnd.choice(addrs),
                details="{}", prev_hash=prev)
            ev.hash = hmac.new(key, canonical(cast(AuditEvent, ev)), hashlib.sha256).hexdigest()
            prev = ev.hash
            rows.append((_db_time(ev.at), ev.action, ev.actor_kind, ev.actor_id, ev.actor_label,
                         ev.company_id, ev.upload_id, ev.remote_addr, ev.details,
                         ev.prev_hash, ev.hash))
        db.executemany(
            "INSERT INTO audit_events (at, action, actor_kind, actor_id, actor_label, "
            "company_id, upload_id, remote_addr, details, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


# -- the benchmark --------------------------------------------------------------------


def run(bench: Bench) -> tuple[list[Record], dict[str, Any]]:
    uploads = env_int("KINKO_BENCH_GROWTH_UPLOADS", 10_000)
    events = env_int("KINKO_BENCH_GROWTH_EVENTS", 1_000_000)
    n = env_int("KINKO_BENCH_GROWTH_REQUESTS", 30)
    stack = bench.stack
    # The reference: a young instance whose every page is already full (the room
    # shows 200, the inbox and the log 50 a page), so that the ratio measures
    # what the totals cost, not the rendering of a fuller page.
    stack.stop_server()
    small = fill(bench, SMALL_UPLOADS, SMALL_EVENTS, days=7)
    stack.start_server()
    reference = measure(bench, _pages(COMPANY, small["sample_upload"]), n)

    stack.stop_server()
    filled = fill(bench, uploads - SMALL_UPLOADS, events - SMALL_EVENTS, days=365)
    stack.start_server()
    grown = measure(bench, _pages(COMPANY, small["sample_upload"]), n)
    with sqlite3.connect(stack.home / "kinko.db") as db:
        totals = {"uploads": _one(db, "SELECT count(*) FROM uploads"),
                  "events": _one(db, "SELECT count(*) FROM audit_events")}

    details: dict[str, Any] = {"small": small, "filled": filled, "totals": totals,
                               "requests": n, "reference": reference, "grown": grown}
    records = [record(f"growth.{name}.p95", grown[name]["p95"], "s",
                      reference[name]["p95"], TARGET) for name in grown]
    if os.environ.get("KINKO_BENCH_GROWTH_VERIFY", "1") != "0":
        t0 = time.perf_counter()
        out = stack.kinko("audit", "verify", timeout=1800)
        details["audit_verify"] = {"seconds": time.perf_counter() - t0,
                                   "output": out.stdout.strip()[-300:]}
        records.append(record("growth.audit_verify", time.perf_counter() - t0, "s", None, None))
    return records, details


def main() -> None:
    with bench_stack() as bench:
        records, details = run(bench)
    report("growth", records, details)
    write_results(records)


if __name__ == "__main__":
    main()

