"""Load with slow connections (issue #8): 20 uploaders × 10 small files while
50 slow TLS connections are held open (slowloris-style: 25 dribble their
headers, 25 their body), all on loopback and bounded in time.  No 5xx, every
upload accepted and clean in the end, nothing lost or stored twice (the
invariant check)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
import requests

from .harness import Stack, build_stack, require_clamd, teardown_stack
from .invariants import check_invariants

UPLOADERS, FILES_EACH, SLOW = 20, 10, 50
PHASE_LIMIT_S = 240  # uploads must all be answered within this, slow peers or not
SETTLE_LIMIT_S = 300  # and all be scanned within this
DRIP_EVERY_S = 1.0
ACCESS_5XX = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) [^"]*" (5\d\d) ')


@pytest.fixture(scope="module")
def lstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_clamd()
    s = build_stack(tmp_path_factory.mktemp)
    try:
        yield s
    finally:
        teardown_stack(s)


class SlowPeers:
    """``n`` TLS connections to the client app that send a byte (headers) or a
    few bytes (body) every DRIP_EVERY_S and never finish their request."""

    def __init__(self, stack: Stack, token: str, n: int) -> None:
        self.stack = stack
        self.token = token
        self.n = n
        self.socks: list[ssl.SSLSocket] = []
        self.dropped = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def _open(self, i: int) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=self.stack.cert)
        port = int(self.stack.env["KINKO_CLIENT_PORT"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        if i % 2 == 0:  # slow headers: a request line, then a header byte by byte
            tls.sendall(b"GET /api/v1/uploads HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        else:  # slow body: a complete, authorised upload whose body trickles in
            tls.sendall(
                b"POST /api/v1/uploads HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Bearer " + self.token.encode() + b"\r\n"
                b"Content-Type: application/octet-stream\r\nX-Purpose: koyo\r\n"
                b"Content-Disposition: attachment; filename*=UTF-8''"
                + quote(f"slow-{i}.csv").encode() + b"\r\n"
                b"Content-Length: 1048576\r\n\r\nid,note\n")
        return tls

    def open_all(self) -> None:
        with ThreadPoolExecutor(10) as pool:
            self.socks = list(pool.map(self._open, range(self.n)))
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.wait(DRIP_EVERY_S):
            for i, s in enumerate(self.socks):
                if s.fileno() < 0:
                    continue
                try:
                    s.sendall(b"a" if i % 2 == 0 else b"1,slow\n")
                except OSError:
                    self.dropped += 1
                    s.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(10)
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


def csv_file(marker: bytes, size: int) -> bytes:
    head = b"id,note\n1," + marker + b"\n"
    return head + os.urandom((size - len(head)) // 2).hex().encode()


def test_uploads_go_through_while_slow_connections_are_held(lstack: Stack) -> None:
    stack = lstack
    token = stack.token("acme", "hr")
    marker = f"KINKO-LOAD-{uuid.uuid4().hex}".encode()
    log_start = len(stack.log_tail(10 ** 9))
    slow = SlowPeers(stack, token, SLOW)
    slow.open_all()
    statuses: list[int] = []
    accepted: dict[str, str] = {}  # id -> sha256
    lock = threading.Lock()

    def uploader(n: int) -> None:
        with requests.Session() as s:
            s.trust_env = False
            for k in range(FILES_EACH):
                size = (64 << 10) + int.from_bytes(os.urandom(2), "big") * 3  # 64–256 KiB
                data = csv_file(marker, size)
                r = s.post(stack.client_url + "/api/v1/uploads", data=data, verify=stack.cert,
                           timeout=PHASE_LIMIT_S, headers={
                               "Authorization": f"Bearer {token}",
                               "Content-Type": "application/octet-stream",
                               "Content-Disposition": f"attachment; filename=load-{n}-{k}.csv",
                               "X-Purpose": "koyo"})
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        body = r.json()
                        assert body["sha256"] == hashlib.sha256(data).hexdigest()
                        accepted[body["id"]] = body["sha256"]

    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(UPLOADERS) as pool:
            futures = [pool.submit(uploader, n) for n in range(UPLOADERS)]
            for f in futures:
                f.result(timeout=max(1, PHASE_LIMIT_S - (time.monotonic() - t0)))
        upload_seconds = time.monotonic() - t0
        held = sum(1 for s in slow.socks if s.fileno() >= 0)
    finally:
        slow.close()

    assert statuses.count(201) == UPLOADERS * FILES_EACH, sorted(set(statuses))
    assert len(accepted) == UPLOADERS * FILES_EACH
    # The slow peers were really held open through the uploads.
    assert held == SLOW, f"only {held} of {SLOW} slow connections survived"

    deadline = time.monotonic() + SETTLE_LIMIT_S
    while True:
        r = requests.get(stack.client_url + "/api/v1/uploads", verify=stack.cert, timeout=60,
                         headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        states = {u["id"]: u["status"] for u in r.json()["uploads"]}
        if all(states.get(i) == "clean" for i in accepted):
            break
        assert time.monotonic() < deadline, (
            f"not all clean after {SETTLE_LIMIT_S} s: "
            f"{sorted(set(states.get(i) for i in accepted), key=str)}")
        time.sleep(1)

    # The slow bodies were cut short: refused as truncated, their partial
    # writes discarded by the requests themselves.
    partial = stack.home / "dropzone" / "partial"  # local drop zone (embedded profile)
    deadline = time.monotonic() + 30
    while partial.exists() and any(partial.iterdir()):
        assert time.monotonic() < deadline, list(partial.iterdir())
        time.sleep(0.2)

    report = check_invariants(stack, markers=[marker], digests=accepted.values())
    assert report.by_status["clean"] == UPLOADERS * FILES_EACH
    log = stack.log_tail(10 ** 9)[log_start:]
    assert ACCESS_5XX.findall(log) == [], [m for m in log.splitlines() if ACCESS_5XX.search(m)]
    print(f"\n{UPLOADERS}x{FILES_EACH} uploads with {SLOW} slow peers held: "
          f"{upload_seconds:.1f} s; slow peers dropped by the server: {slow.dropped}")
