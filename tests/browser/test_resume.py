"""A 300 MiB upload in a real browser survives a network outage and a page
reload, and resumes without sending again what the server had confirmed.

The browser reaches the client app through a loopback TCP relay
(:class:`CutProxy`) that this test controls: at about 100 MiB it drops every
connection in the middle of a PATCH and refuses new ones for a few seconds,
as a broken line would.  room.js retries with backoff, asks the server for
its offset (HEAD) and goes on.  Later the page is reloaded in the middle of
a PATCH; the same file is chosen again and the upload resumes from the
offset the server reports (the tus address was kept in localStorage).

Proof from the server's side: ``tus_uploads.received`` counts every byte
the server read from PATCH bodies, kept or not; it equals the file's length,
so not one byte was sent twice.  The relay's byte count agrees (within
protocol overhead), and the file ends ``clean`` with the right SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from functional.harness import Stack

from .conftest import Tab
from .test_room import sign_in

pytestmark = pytest.mark.clamd

MiB = 1 << 20
SIZE = 300 * MiB
CHUNK = 8 * MiB  # room.js TUS_CHUNK
CUT_AT = 100 * MiB + 3 * MiB  # in the middle of the 13th PATCH
RELOAD_AT = 190 * MiB
OUTAGE_S = 2.5
DONE_MS = 240_000  # upload, assembly and a 300 MiB clamd scan on a busy machine


class CutProxy:
    """A TCP relay on loopback; ``arm(n)`` drops every connection once ``n``
    bytes went up and refuses new ones for ``outage`` seconds."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.up_bytes = 0
        self.cuts = 0
        self.refused = 0
        self._arm_at: int | None = None
        self._outage = 0.0
        self._down_until = 0.0
        self._socks: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, at_bytes: int, outage: float) -> None:
        with self.lock:
            self._arm_at, self._outage = at_bytes, outage

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                self.refused += 1
                _reset(conn)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(conn)
                continue
            upstream.settimeout(None)
            with self.lock:
                self._socks.update((conn, upstream))
            threading.Thread(target=self._pump, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                if up:
                    with self.lock:
                        self.up_bytes += len(data)
                        fire = self._arm_at is not None and self.up_bytes >= self._arm_at
                        if fire:
                            self._arm_at = None
                    if fire:
                        self.cut()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            with self.lock:
                self._socks.difference_update((src, dst))

    def cut(self) -> None:
        """Every live connection is reset; new ones are refused for a while."""
        with self.lock:
            self._down_until = time.monotonic() + self._outage
            socks, self._socks = list(self._socks), set()
            self.cuts += 1
        for s in socks:
            _reset(s)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self.cut()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


def big_pdf(path: Path) -> str:
    """SIZE bytes: a PDF header, random bytes, an end marker.  Returns its SHA-256."""
    digest = hashlib.sha256()
    head, tail = b"%PDF-1.4\n", b"\n%%EOF\n"
    left = SIZE - len(head) - len(tail)
    with path.open("wb") as out:
        for block in (head, *_random_blocks(left), tail):
            out.write(block)
            digest.update(block)
    assert path.stat().st_size == SIZE
    return digest.hexdigest()


def _random_blocks(n: int) -> Any:
    while n > 0:
        block = os.urandom(min(n, 8 * MiB))
        n -= len(block)
        yield block


def tus_state(stack: Stack) -> dict[str, Any] | None:
    with stack.db() as db:
        cur = db.execute("SELECT id, \"offset\", length, parts, received, upload_id "
                         "FROM tus_uploads WHERE length = ? ORDER BY created_at DESC", (SIZE,))
        row = cur.fetchone()
        names = [c[0] for c in cur.description]
    return dict(zip(names, row, strict=True)) if row else None


def wait_offset(stack: Stack, at_least: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = tus_state(stack)
        if state is not None and state["offset"] >= at_least:
            return state
        assert time.monotonic() < deadline, (at_least, state)
        time.sleep(0.2)


def test_300_mib_upload_resumes_after_outage_and_reload(stack: Stack, tab: Tab,
                                                       tmp_path: Path) -> None:
    sha256 = big_pdf(tmp_path / "大容量スキャン.pdf")
    login = "resume" + secrets.token_hex(3)
    password = "Pw" + secrets.token_hex(5) + "9"
    stack.kinko("user", "add", "acme", login, "--password", password)
    proxy = CutProxy(int(urlsplit(stack.client_url).port or 443))
    url = f"https://localhost:{proxy.port}"
    page = tab.page
    patches: list[int] = []
    page.on("request", lambda r: patches.append(int(r.headers.get("upload-offset", "-1")))
            if r.method == "PATCH" and "/api/v1/tus/" in r.url else None)
    try:
        sign_in(tab, stack, login, password, base_url=url)
        t = page.evaluate("JSON.parse(document.getElementById('room-i18n').textContent)")
        page.select_option("#purpose", "koyo")

        # 1. A network outage in the middle of a PATCH.
        proxy.arm(CUT_AT, OUTAGE_S)
        page.set_input_files("#room-files", str(tmp_path / "大容量スキャン.pdf"))
        item = page.locator("#room-list li.room-item")
        item.wait_for()
        deadline = time.monotonic() + 120
        while proxy.cuts == 0:
            assert time.monotonic() < deadline, ("never reached the cut", proxy.up_bytes)
            time.sleep(0.1)
        at_cut = tus_state(stack)
        assert at_cut is not None and at_cut["offset"] < SIZE
        item.locator(".status").filter(has_text=t["retrying"]).wait_for(timeout=30_000)
        tab.shot("resume-1-retrying")
        # It goes on from where the server stood, after the outage.
        wait_offset(stack, at_cut["offset"] + 2 * CHUNK, timeout=120)
        assert proxy.refused >= 1, "the retry did not meet the outage"

        # 2. A reload in the middle of a PATCH; the same file is chosen again.
        before_reload = wait_offset(stack, RELOAD_AT, timeout=120)
        page.reload()
        page.wait_for_selector("#room-drop:not([hidden])")
        time.sleep(1.0)  # the server commits the part the reload cut short
        after_reload = tus_state(stack)
        assert after_reload is not None and after_reload["offset"] < SIZE
        assert after_reload["offset"] >= before_reload["offset"]
        page.select_option("#purpose", "koyo")
        page.set_input_files("#room-files", str(tmp_path / "大容量スキャン.pdf"))
        item = page.locator("#room-list li.room-item")
        progress_from = after_reload["offset"]
        page.wait_for_function(
            "(least) => { const p = document.querySelector('#room-list progress');"
            " return p && p.value >= least; }", arg=progress_from, timeout=30_000)
        tab.shot("resume-2-after-reload")

        # 3. The end: an ordinary upload, scanned clean by the real clamd.
        badge = item.locator(".status").filter(has_text=t["status"]["clean"])
        try:
            badge.wait_for(timeout=DONE_MS)
        except Exception as exc:  # noqa: BLE001 - reported with the page's state
            raise AssertionError(f"entry says {item.inner_text()!r}; tus {tus_state(stack)}"
                                 f"\n{stack.log_tail()}") from exc
        tab.shot("resume-3-clean")
    finally:
        proxy.close()

    final = tus_state(stack)
    assert final is not None and final["upload_id"], final
    # Server side: every byte read from a PATCH body was kept, none twice.
    assert final["offset"] == SIZE and final["received"] == SIZE, final
    # At least one part per chunk; a cut mid-PATCH adds a shorter part, but a
    # cut can also land between two PATCHes (then nothing extra is stored), so
    # the proof that nothing went twice is received == SIZE above.
    assert final["parts"] >= -(-SIZE // CHUNK), final
    with stack.db() as db:
        status, size, digest = db.execute(
            "SELECT status, size, sha256 FROM uploads WHERE id = ?",
            (final["upload_id"],)).fetchone()
    assert (status, size, digest) == ("clean", SIZE, sha256)
    # Browser side: every PATCH started at or after the previous one's start,
    # and the wire carried the file once (plus TLS and HTTP overhead).
    assert patches == sorted(patches), patches
    assert proxy.up_bytes < SIZE * 1.02, proxy.up_bytes
    assert stack.objects("dropzone", "tus/" + final["id"]) == []
    assert not tab.csp_errors(), tab.csp_errors()
    assert not [m for m in tab.console_errors if "pageerror" in m], tab.console_errors


def test_cancelling_a_resumable_upload_terminates_it(stack: Stack, tab: Tab,
                                                     tmp_path: Path) -> None:
    """Cancel on a tus upload: the browser sends DELETE, the server drops the
    parts and the row, and nothing is left to resume."""
    size = 24 * MiB
    path = tmp_path / "取消.pdf"
    path.write_bytes(b"%PDF-1.4\n" + os.urandom(size - 16) + b"\n%%EOF\n")
    login = "cancel" + secrets.token_hex(3)
    password = "Pw" + secrets.token_hex(5) + "9"
    stack.kinko("user", "add", "acme", login, "--password", password)
    page = tab.page
    sign_in(tab, stack, login, password)
    t = page.evaluate("JSON.parse(document.getElementById('room-i18n').textContent)")
    page.select_option("#purpose", "koyo")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 20, "downloadThroughput": -1,
        "uploadThroughput": 4 * MiB})
    page.set_input_files("#room-files", str(path))
    deadline = time.monotonic() + 60
    while True:  # the first 8 MiB piece is stored on the server
        with stack.db() as db:
            found = db.execute("SELECT id, \"offset\" FROM tus_uploads WHERE length = ?",
                               (size,)).fetchone()
        if found and found[1] > 0:
            break
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    tus_id = found[0]
    assert stack.objects("dropzone", "tus/" + tus_id)
    item = page.locator("#room-list li.room-item")
    item.locator("button.room-cancel").click()
    item.locator(".status").filter(has_text=t["cancelled"]).wait_for()
    # The row goes with the DELETE; the PATCH the browser aborted just before
    # may still be ending on the server, and then deletes its own part.
    deadline = time.monotonic() + 30
    while True:
        with stack.db() as db:
            gone = db.execute("SELECT count(*) FROM tus_uploads WHERE id = ?",
                              (tus_id,)).fetchone()[0] == 0
        left = stack.objects("dropzone", "tus/" + tus_id)
        if gone and not left:
            break
        assert time.monotonic() < deadline, f"not terminated: row gone {gone}, parts {left}"
        time.sleep(0.2)
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('kinko-tus:'))"
                         ) == []
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    assert not tab.csp_errors(), tab.csp_errors()
