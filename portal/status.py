"""Scanner health as the office sees it: does clamd answer, which signatures.

The worker probes clamd every minute and stores what it saw; the office app
reads it.  With no official signature database (no internet for freshclam)
the office is warned loudly: the scanner then only knows the test signature.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from .models import SystemStatus, utcnow
from .services import Services

log = logging.getLogger(__name__)
KEY = "scanner"
STALE_SIGNATURE_DAYS = 3


@dataclass(frozen=True)
class ScannerHealth:
    reachable: bool
    engine: str | None
    db_version: str | None
    db_date: datetime | None
    official: bool
    checked_at: datetime | None

    @property
    def warnings(self) -> list[str]:
        out = []
        if not self.reachable:
            out.append("unreachable")
        if not self.official or self.db_version is None:
            out.append("test_signatures_only")
        elif self.db_date and (datetime.now(UTC) - self.db_date).days >= STALE_SIGNATURE_DAYS:
            out.append("signatures_stale")
        return out


def parse_version(reply: str) -> tuple[str | None, str | None, datetime | None]:
    """``ClamAV 1.4.6/27490/Mon Nov 23 09:00:00 2026`` → (engine, db, date)."""
    parts = reply.strip().split("/", 2)
    engine = parts[0] or None
    db = parts[1] if len(parts) > 1 and re.fullmatch(r"\d+", parts[1] or "") else None
    date = None
    if len(parts) > 2:
        try:
            date = parsedate_to_datetime(parts[2].strip() + " +0000")
        except (TypeError, ValueError):
            date = None
    return engine, db, date


def probe(services: Services) -> ScannerHealth:
    official = _official_flag(services)
    scanner = services.scanner()
    engine = db = None
    date = None
    reachable = False
    if scanner is not None and scanner.ping():
        reachable = True
        try:
            engine, db, date = parse_version(scanner.version())
        except Exception:  # noqa: BLE001 - any failure means "unknown", never healthy
            engine = None
    health = ScannerHealth(reachable, engine, db, date, official and db is not None, utcnow())
    _store(services, health)
    return health


def _official_flag(services: Services) -> bool:
    path = services.settings.run_dir / "clamd.json"
    try:
        return bool(json.loads(path.read_text()).get("official"))
    except (OSError, ValueError):
        # An external clamd (KINKO_CLAMD): trust its VERSION reply alone.
        return services.settings.clamd is not None


def _store(services: Services, health: ScannerHealth) -> None:
    value: dict[str, Any] = {
        "reachable": health.reachable, "engine": health.engine, "db_version": health.db_version,
        "db_date": health.db_date.isoformat() if health.db_date else None,
        "official": health.official,
    }
    with services.sessions() as db, db.begin():
        row = db.get(SystemStatus, KEY) or SystemStatus(key=KEY)
        row.value = json.dumps(value)
        row.updated_at = utcnow()
        db.add(row)


def load(services: Services) -> ScannerHealth:
    with services.sessions() as db:
        row = db.get(SystemStatus, KEY)
    if row is None:
        return ScannerHealth(False, None, None, None, False, None)
    v = json.loads(row.value)
    date = datetime.fromisoformat(v["db_date"]) if v.get("db_date") else None
    return ScannerHealth(bool(v.get("reachable")), v.get("engine"), v.get("db_version"), date,
                         bool(v.get("official")), row.updated_at)


def start_scanner_monitor(services: Services) -> threading.Thread:
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                probe(services)
            except Exception:  # noqa: BLE001 - the monitor must never die
                log.exception("scanner probe failed")
            stop.wait(services.settings.scanner_probe_seconds)

    thread = threading.Thread(target=loop, name="scanner-monitor", daemon=True)
    thread.start()
    return thread
