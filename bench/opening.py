"""Memory of opening a password-protected upload (``portal.opening``): the one path that
holds a whole file in memory, bounded by ``portal.unlock.MAX_IN_MEMORY`` (200 MiB).

A protected ZIP of ``KINKO_BENCH_OPEN_MB`` (default 190) MiB of fresh random bytes is
kept as a refused upload, then opened with its password by the client app's own code,
in this process, with the client app's services (local drop zone, SQLite; the scan
while receiving is off here, its memory file is not RSS anyway).  The record is the
growth of this process's peak RSS (VmHWM, reset through ``clear_refs`` just before),
against the file's size: holding the file once is the floor, the target is 2.2 times
it (the file and what came out of it, while both are needed).

Not part of a stack run: nothing here crosses a process boundary.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import secrets
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyzipper

from bench.common import MiB, Record, env_int, record, report, reset_peak, rss_kb, write_results

TARGET_TIMES_FILE = 2.2


def _protected_zip(size: int, password: str) -> bytes:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_STORED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode())
        zf.writestr("scan.png", b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8))
    return out.getvalue()


def run() -> tuple[list[Record], dict[str, Any]]:
    size = env_int("KINKO_BENCH_OPEN_MB", 190) * MiB
    home = Path(tempfile.mkdtemp(prefix="kinko-bench-open-"))
    try:
        return _run(size, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(size: int, home: Path) -> tuple[list[Record], dict[str, Any]]:
    from portal import opening
    from portal.accounts import create_client_user, create_company
    from portal.audit import SYSTEM
    from portal.instance import init_instance
    from portal.models import Status, Upload, utcnow
    from portal.services import build_services
    from portal.settings import Settings
    from portal.unlock import save_opening_enabled
    from storage.envelope import seal

    settings = Settings.from_env({"KINKO_HOME": str(home), "KINKO_SCAN_ON_RECEIPT": "0",
                                  "KINKO_CLAMD": "unix:///nonexistent.sock"})
    init_instance(settings)
    services = build_services(settings, "client")
    with services.sessions() as db, db.begin():
        company = create_company(db, services.audit_key, SYSTEM, "bench", "Bench")
        user, _ = create_client_user(db, services.audit_key, SYSTEM, company.id, "hr")
        save_opening_enabled(db, True)
        db.flush()
        db.expunge(user)
    password = "パス-" + secrets.token_urlsafe(12)  # the file's, typed by the client
    data = _protected_zip(size, password)
    upload_id = os.urandom(16).hex()
    key = f"dz/{upload_id}"
    with services.dropzone.writer(key, {"created": "0"}) as out:
        with seal(out, services.dropzone_key, key, hash_ciphertext=False) as sealed:
            for start in range(0, len(data), MiB):
                sealed.write(data[start:start + MiB])
    with services.sessions() as db, db.begin():
        db.add(Upload(id=upload_id, company_id=user.company_id, filename="bench.zip",
                      purpose_code="koyo", status=Status.REFUSED, reason="encrypted",
                      size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      dropzone_key=key, unlock_until=utcnow() + timedelta(hours=1)))
    stored = len(data)
    del data
    gc.collect()
    pid = os.getpid()
    before = rss_kb(pid)
    if not reset_peak(pid):
        raise SystemExit("cannot reset the peak RSS (clear_refs): run as the file's owner")
    t0 = time.perf_counter()
    new_ids = opening.open_upload(services, user, upload_id, password, None)
    seconds = time.perf_counter() - t0
    peak = rss_kb(pid, "VmHWM")
    growth_mb = (peak - before) / 1024
    file_mb = stored / MiB
    records = [record(f"memory.opening.{size // MiB}MiB", growth_mb, "MB", file_mb,
                      round(TARGET_TIMES_FILE * file_mb, 1))]
    details = {"file_mb": round(file_mb, 1), "rss_before_mb": round(before / 1024, 1),
               "peak_mb": round(peak / 1024, 1), "opened_files": len(new_ids),
               "seconds": round(seconds, 2)}
    return records, details


def main() -> None:
    records, details = run()
    report("opening", records, details)
    write_results(records)


if __name__ == "__main__":
    main()
