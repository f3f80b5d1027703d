"""Faults (issue #8): what a crash, a failing or full disk and a locked
database do to an upload, on the real stack, each test ending with the
invariant check of ``invariants.py``.  Loopback only, bounded in time.

1. the client app SIGKILLed while a large upload body streams in;
2. storage refusing writes: the drop zone during an upload, the vault during a pull;
3. the drop zone full (a real 8 MiB tmpfs);
4. the database locked for longer than the busy timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests

from .harness import (
    Stack,
    build_stack,
    children,
    cmdline,
    csrf_from,
    require_clamd,
    teardown_stack,
)
from .invariants import check_invariants, files_containing, run_reconcile, settle

pytestmark = pytest.mark.skipif(
    os.environ.get("KINKO_TEST_PROFILE", "embedded") != "embedded",
    reason="fault injection here works on SQLite and local folders (embedded profile)")

BUSY_TIMEOUT_MS = 2000
FAULT_ENV = {
    # A writer gives up on a held SQLite lock after 2 s (default 15 s).
    "KINKO_DB_BUSY_TIMEOUT_MS": str(BUSY_TIMEOUT_MS),
    # A pull whose storage failed is retried after 1 s (default 30 s).
    "KINKO_PULL_RETRY_SECONDS": "1",
}
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def keep_log(stack: Stack, name: str) -> None:
    """Keep the server log of a fault stack for a look after a failure."""
    out = Path(tempfile.gettempdir()) / "kinko-fault-logs"
    out.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        (out / f"{name}.log").write_text(stack.log_tail(10 ** 9))


def require_tools() -> None:
    require_clamd()


def can_mount() -> str | None:
    """None if this process may mount (root, not forbidden), else why not."""
    probe = Path(tempfile.mkdtemp(prefix="kinko-mount-probe-"))
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            return f"cannot mount a tmpfs here: {r.stderr.strip()}"
        subprocess.run(["umount", str(probe)], check=True, timeout=20)
        return None
    except FileNotFoundError:
        return "mount(8) is not installed"
    finally:
        probe.rmdir()


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools()
    s = build_stack(tmp_path_factory.mktemp, extra_env=FAULT_ENV)
    try:
        yield s
    finally:
        keep_log(s, "faults")
        teardown_stack(s)


@pytest.fixture(scope="module")
def token(fstack: Stack) -> str:
    return fstack.token("acme", "hr")


# -- helpers -------------------------------------------------------------------

def marked_csv(marker: bytes, size: int) -> bytes:
    row = b"row," + marker + b"," + os.urandom(24).hex().encode() + b"\n"
    body = b"id,note,noise\n" + row * (size // len(row) + 1)
    return body[:size - 1] + b"\n"


class PausingBody:
    """A request body with a length (requests sends Content-Length) that stops
    after ``pause_at`` bytes until the test says go on; then it either sends
    the rest or ends short (``finish=False``, as a dying client would)."""

    def __init__(self, data: bytes, pause_at: int, *, finish: bool = True) -> None:
        self.data = data
        self.pos = 0
        self.pause_at = pause_at
        self.finish = finish
        self.reached = threading.Event()
        self.resume = threading.Event()

    def __len__(self) -> int:
        return len(self.data)

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.pause_at and not self.reached.is_set():
            self.reached.set()
            self.resume.wait(60)
            if not self.finish:
                return b""
        n = 256 << 10 if n < 0 else min(n, 256 << 10)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


class Background:
    """Run one request in a thread; keep its response or its exception."""

    def __init__(self, fn: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request did not end"


def wait_until(predicate: Any, timeout: float, what: str, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n"
                                 + (stack.log_tail() if stack else ""))
        time.sleep(0.1)


def partials(stack: Stack, area: str = "dropzone") -> list[Path]:
    return sorted(p for p in (stack.home / area / "partial").iterdir() if p.is_file())


def api_ids(stack: Stack, token: str) -> set[str]:
    r = requests.get(stack.client_url + "/api/v1/uploads", verify=stack.cert, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return {u["id"] for u in r.json()["uploads"]}


def row_ids(stack: Stack) -> set[str]:
    with contextlib.closing(sqlite3.connect(stack.home / "kinko.db", timeout=30)) as db:
        return {r[0] for r in db.execute("SELECT id FROM uploads")}


def rejections(stack: Stack, reason: str) -> int:
    with contextlib.closing(sqlite3.connect(stack.home / "kinko.db", timeout=30)) as db:
        rows = db.execute("SELECT details FROM audit_events WHERE action = ?",
                          ("client:upload:rejected",)).fetchall()
    return sum(1 for (details,) in rows if json.loads(details).get("reason") == reason)


def client_app_pids(stack: Stack) -> list[int]:
    """The client app's gunicorn master under `kinko serve` and its workers."""
    assert stack.server is not None
    masters = [p for p in children(stack.server.pid)
               if b"portal.client:create_app" in cmdline(p)]
    assert len(masters) == 1, masters
    workers = children(masters[0])
    assert workers, "the client app has no worker process"
    return masters + workers


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for every process (a read-only bind mount: root
    ignores file modes, not EROFS)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True, timeout=20)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True, timeout=20)
        yield
    finally:
        umount(path)


def umount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=20).returncode == 0:
            return
        time.sleep(0.2)
    subprocess.run(["umount", "-l", str(path)], check=True, timeout=20)


def office_pull(stack: Stack, upload_id: str) -> None:
    office = stack.office("boss")
    page = office.get(f"{stack.office_url}/uploads/{upload_id}")
    r = office.post(f"{stack.office_url}/uploads/{upload_id}/pull",
                    data={"csrf_token": csrf_from(page.text)}, allow_redirects=False)
    assert r.status_code in (302, 303), r.status_code


def japanese_first(messages: list[str]) -> None:
    """Every message the client was shown starts in Japanese (the catalogue's
    wording); checked last, so that the behaviour above is proven first."""
    for msg in messages:
        assert msg and JAPANESE.search(msg[:20]), f"not Japanese first: {msg!r}"


# -- 1. the client app killed mid-upload ---------------------------------------

def test_web_process_killed_mid_upload(fstack: Stack, token: str) -> None:
    stack = fstack
    settle(stack)
    before_ids, before_rows = api_ids(stack, token), row_ids(stack)
    before_objects = stack.objects("dropzone")
    marker = f"KINKO-KILL-{uuid.uuid4().hex}".encode()
    data = marked_csv(marker, 24 << 20)
    body = PausingBody(data, 8 << 20, finish=False)
    req = Background(lambda: stack.api_upload(token, cast(Any, body), "kill.csv"))

    wait_until(body.reached.is_set, 30, "the client to send 8 MiB", stack)
    # The server has encrypted a good part of it into a partial write.
    wait_until(lambda: any(p.stat().st_size > (4 << 20) for p in partials(stack)), 30,
               "a partial drop-zone write", stack)
    assert stack.server is not None
    for pid in client_app_pids(stack):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    body.resume.set()
    req.join()
    assert req.error is not None or req.result.status_code != 201, "a killed upload got 201"
    # `kinko serve` never runs half a portal: it stops the rest and exits.
    assert stack.server.wait(60) == 1

    left = partials(stack)
    assert left, "the crash should have left a partial write"
    assert files_containing([stack.home / "dropzone"], [marker]) == []  # ciphertext only
    assert stack.objects("dropzone") == before_objects  # nothing committed
    assert row_ids(stack) == before_rows  # no half-upload became a row

    stack.start_server()
    assert api_ids(stack, token) == before_ids
    # A live upload's partial write is safe from the default threshold...
    run_reconcile(stack, orphan_age=3600, partial_age=3600)
    assert [p.name for p in partials(stack)] == [p.name for p in left]
    # ... and removed once old enough (KINKO_PARTIAL_AGE_SECONDS).
    run_reconcile(stack, orphan_age=3600, partial_age=0)
    assert partials(stack) == []

    again = stack.api_upload(token, data, "kill-again.csv")
    assert again.status_code == 201, again.text
    stack.wait_for(token, again.json()["id"], {"clean"})
    report = check_invariants(stack, markers=[marker])
    assert report.by_status["clean"] >= 1 and report.verified >= 1


# -- 2. storage refusing writes --------------------------------------------------

def test_dropzone_unwritable_refuses_uploads_cleanly(fstack: Stack, token: str) -> None:
    stack = fstack
    if reason := can_mount():
        pytest.skip(reason)
    keep = stack.api_upload(token, b"a,b\n1,2\n", "keep.csv")
    assert keep.status_code == 201
    stack.wait_for(token, keep.json()["id"], {"clean"})
    settle(stack)
    before_rows, before_objects = row_ids(stack), stack.objects("dropzone")
    refused_before = rejections(stack, "storage_unavailable")
    marker = f"KINKO-RO-{uuid.uuid4().hex}".encode()
    data = marked_csv(marker, 300 << 10)
    shown: list[str] = []

    client = stack.client("acme", "hr", "acme-Passw0rd")
    with read_only(stack.home / "dropzone"):
        r = stack.api_upload(token, data, "ro.csv")
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.json()["error"] == "storage_unavailable"
        assert r.headers.get("Retry-After", "").isdigit()
        shown.append(r.json()["message"])
        assert "Traceback" not in r.text

        r = stack.form_upload(client, data, "ro-form.csv")
        assert r.status_code == 303, r.status_code  # back to the room, with the reason
        room = client.get(stack.client_url + "/")
        assert room.status_code == 200
        flashed = re.search(r'class="[^"]*error[^"]*"[^>]*>\s*([^<]+)<', room.text)
        assert flashed, "the room shows no error"
        shown.append(flashed.group(1).strip())

    assert rejections(stack, "storage_unavailable") == refused_before + 2  # both audited
    assert row_ids(stack) == before_rows and stack.objects("dropzone") == before_objects
    assert partials(stack) == []
    # Writable again: the same file goes through.
    r = stack.api_upload(token, data, "ro.csv")
    assert r.status_code == 201, r.text
    stack.wait_for(token, r.json()["id"], {"clean"})
    check_invariants(stack, markers=[marker])
    japanese_first(shown)


def test_vault_unwritable_pull_retries_and_keeps_the_source(fstack: Stack, token: str) -> None:
    stack = fstack
    if reason := can_mount():
        pytest.skip(reason)
    marker = f"KINKO-VAULT-RO-{uuid.uuid4().hex}".encode()
    data = marked_csv(marker, 2 << 20)
    up = stack.api_upload(token, data, "vault-ro.csv").json()
    stack.wait_for(token, up["id"], {"clean"})
    settle(stack)
    log_before = len(stack.log_tail(10 ** 9))

    with read_only(stack.home / "vault"):
        office_pull(stack, up["id"])
        # Several attempts fail (one per KINKO_PULL_RETRY_SECONDS); through all
        # of them the upload stays clean with its drop-zone source intact.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert stack.status(token, up["id"])["status"] == "clean"
            assert len(stack.objects("dropzone", f"dz/{up['id']}")) == 1
            assert stack.objects("vault", f"vault/{up['id']}.") == []
            time.sleep(0.25)
        log = stack.log_tail(10 ** 9)[log_before:]
        assert log.count(f"pull of {up['id']} failed") >= 2, log[-3000:]

    # Storage is back: the next retry completes the move.
    stack.wait_for(token, up["id"], {"vaulted"}, timeout=60)
    report = check_invariants(stack, markers=[marker])
    assert report.by_status["vaulted"] >= 1


# -- 3. the drop zone full ---------------------------------------------------------

@pytest.fixture
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools()
    if reason := can_mount():
        pytest.skip(reason)
    dz = Path(tempfile.mkdtemp(prefix="kinko-dzfull-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(dz)],
                   check=True, timeout=20)
    try:
        s = build_stack(tmp_path_factory.mktemp, extra_env={
            **FAULT_ENV, "KINKO_DROPZONE_URL": dz.as_uri()})
        try:
            s.env["KINKO_TEST_DROPZONE_DIR"] = str(dz)
            yield s
        finally:
            keep_log(s, "disk-full")
            teardown_stack(s)
    finally:
        umount(dz)
        dz.rmdir()


def test_disk_full_gives_507_and_keeps_everything_else(full_stack: Stack) -> None:
    stack = full_stack
    dz = Path(stack.env["KINKO_TEST_DROPZONE_DIR"])
    token = stack.token("acme", "hr")
    marker = f"KINKO-FULL-{uuid.uuid4().hex}".encode()
    small = [marked_csv(marker, 256 << 10) for _ in range(2)]
    ids = []
    for i, body in enumerate(small):
        r = stack.api_upload(token, body, f"small-{i}.csv")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for upload_id in ids:
        stack.wait_for(token, upload_id, {"clean"})
    office_pull(stack, ids[1])
    stack.wait_for(token, ids[1], {"vaulted"})
    settle(stack)
    before_rows = row_ids(stack)
    shown: list[str] = []

    big = marked_csv(marker, 12 << 20)  # more than the 8 MiB the drop zone has
    r = stack.api_upload(token, big, "big.csv")
    assert r.status_code == 507, (r.status_code, r.text[:300])
    assert r.json()["error"] == "storage_full"
    shown.append(r.json()["message"])
    # The partial write is gone at once (not left for the reconciler), so the
    # space is free again.
    assert list((dz / "partial").iterdir()) == []
    assert os.statvfs(dz).f_bfree * os.statvfs(dz).f_frsize > (6 << 20)
    assert rejections(stack, "storage_full") == 1
    assert row_ids(stack) == before_rows

    client = stack.client("acme", "hr", "acme-Passw0rd")
    r = stack.form_upload(client, big, "big-form.csv")
    assert r.status_code == 303, r.status_code
    assert list((dz / "partial").iterdir()) == []
    assert rejections(stack, "storage_full") == 2

    # The files already there are untouched, and a file that fits still goes in.
    assert stack.status(token, ids[0])["status"] == "clean"
    r = stack.api_upload(token, small[0][:100_000], "fits.csv")
    assert r.status_code == 201, r.text
    stack.wait_for(token, r.json()["id"], {"clean"})
    report = check_invariants(stack, markers=[marker])
    assert report.by_status == {"clean": 2, "vaulted": 1}
    assert report.verified == 3
    japanese_first(shown)


# -- 4. the database locked past the busy timeout --------------------------------

@contextlib.contextmanager
def db_locked(stack: Stack) -> Iterator[None]:
    """Hold SQLite's write lock (BEGIN EXCLUSIVE) from this process."""
    conn = sqlite3.connect(stack.home / "kinko.db", timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def test_database_locked_gives_503_and_leaves_no_orphan(fstack: Stack, token: str) -> None:
    stack = fstack
    client = stack.client("acme", "hr", "acme-Passw0rd")  # signed in before the lock
    settle(stack)
    before_rows, before_objects = row_ids(stack), stack.objects("dropzone")
    marker = f"KINKO-LOCK-{uuid.uuid4().hex}".encode()
    data = marked_csv(marker, 4 << 20)
    shown: list[str] = []

    listing = {"url": stack.client_url + "/api/v1/uploads", "verify": stack.cert,
               "timeout": 30, "headers": {"Authorization": f"Bearer {token}"}}
    # Used just now, so the token's "last used" needs no write for 30 s.
    with stack.db() as db:
        db.execute("UPDATE api_tokens SET last_used_at = ?", (db.ago(seconds=0),))
        db.commit()
    with db_locked(stack):
        t0 = time.monotonic()
        r = stack.api_upload(token, data[:4096], "locked-small.csv")
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.headers.get("Retry-After", "").isdigit()
        assert r.json()["error"] == "unavailable"
        shown.append(r.json()["message"])
        # It waited for the lock about the busy timeout, not the 15 s default.
        assert time.monotonic() - t0 < 10
        assert stack.objects("dropzone") == before_objects and partials(stack) == []
        # Reading takes no lock (portal.db): the list still answers meanwhile.
        r = requests.get(**listing)  # type: ignore[arg-type]
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert time.monotonic() - t0 < 10

        page = client.get(stack.client_url + "/")
        assert page.status_code == 503, page.status_code
        assert page.headers.get("Retry-After", "").isdigit()
        assert "Traceback" not in page.text and "Reference" not in page.text

    # Now the lock arrives while a body is on its way: the body is stored,
    # but the row cannot be inserted.  The object must not survive.
    body = PausingBody(data, 2 << 20)
    req = Background(lambda: stack.api_upload(token, cast(Any, body), "locked.csv"))
    wait_until(body.reached.is_set, 30, "the client to send 2 MiB", stack)
    wait_until(lambda: partials(stack), 30, "a partial drop-zone write", stack)
    with db_locked(stack):
        body.resume.set()
        req.join()
        assert req.error is None, req.error
        r = req.result
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.headers.get("Retry-After", "").isdigit()
        shown.append(r.json()["message"])
        # Deleted by the request itself, not left for the reconciler.
        assert stack.objects("dropzone") == before_objects
        assert partials(stack) == []

    # The lock is gone: everything works again.
    assert row_ids(stack) == before_rows
    r = stack.api_upload(token, data, "locked.csv")
    assert r.status_code == 201, r.text
    stack.wait_for(token, r.json()["id"], {"clean"})
    assert client.get(stack.client_url + "/").status_code == 200
    check_invariants(stack, markers=[marker])
    japanese_first(shown)
