"""tus 1.0.0 resumable uploads over real HTTPS (portal/client/tus.py, portal/tus.py).

The protocol (OPTIONS, creation, HEAD, PATCH, termination, expiration), its
refusals (412, 409, 413, 415, 404 across companies, 410), a connection cut
in the middle of a PATCH (the server keeps the prefix that arrived and the
client re-sends nothing), bearer tokens and session + CSRF, and the
finished upload scanned by the real clamd like any other (EICAR sent in two
pieces → infected).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from .harness import Stack, csrf_from, eicar

pytestmark = pytest.mark.clamd

TUS = "/api/v1/tus/"
V = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def meta(filename: str, purpose: str = "koyo") -> str:
    return f"filename {b64(filename)},purpose {b64(purpose)}"


class Tus:
    """A small tus client: bearer token or a signed-in session (+ CSRF)."""

    def __init__(self, stack: Stack, *, token: str | None = None,
                 session: requests.Session | None = None, csrf: str | None = None) -> None:
        self.stack = stack
        self.http = session or requests.Session()
        self.http.trust_env = False
        self.http.verify = stack.cert
        self.headers = dict(V)
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        if csrf:
            self.headers["X-CSRFToken"] = csrf

    def url(self, location: str) -> str:
        return self.stack.client_url + location

    def request(self, method: str, path: str, **headers: str) -> requests.Response:
        return self.http.request(method, self.url(path), headers={**self.headers, **headers},
                                 timeout=60)

    def create(self, length: int, filename: str, purpose: str = "koyo") -> str:
        r = self.request("POST", TUS, **{"Upload-Length": str(length),
                                         "Upload-Metadata": meta(filename, purpose)})
        assert r.status_code == 201, (r.status_code, r.text)
        location = r.headers["Location"]
        assert location.startswith(TUS), location
        return location

    def head(self, location: str) -> requests.Response:
        return self.request("HEAD", location)

    def patch(self, location: str, offset: int, data: bytes, **headers: str) -> requests.Response:
        h = {**self.headers, "Content-Type": OFFSET_TYPE, "Upload-Offset": str(offset),
             **headers}
        return self.http.patch(self.url(location), data=data, headers=h, timeout=120)

    def send(self, data: bytes, filename: str, chunk: int, purpose: str = "koyo") -> str:
        """The whole file in chunks; returns the upload id of the finished upload."""
        location = self.create(len(data), filename, purpose)
        offset = 0
        while offset < len(data):
            r = self.patch(location, offset, data[offset:offset + chunk])
            assert r.status_code == 204, (r.status_code, r.text)
            offset = int(r.headers["Upload-Offset"])
        return str(r.headers["Kinko-Upload-Id"])


def error(resp: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert "Traceback" not in resp.text
    body = dict(resp.json())
    assert body["error"] == code, body
    assert body["message"], body
    return body


def rejected(stack: Stack, reason: str) -> int:
    with stack.db() as db:
        rows = db.execute("SELECT details FROM audit_events WHERE action = ?",
                          ("client:upload:rejected",)).fetchall()
    return sum(1 for (d,) in rows if json.loads(d).get("reason") == reason)


def tus_row(stack: Stack, location: str) -> dict[str, Any] | None:
    tus_id = location.rstrip("/").rsplit("/", 1)[-1]
    with stack.db() as db:
        cur = db.execute("SELECT id, \"offset\", length, parts, received, upload_id "
                         "FROM tus_uploads WHERE id = ?", (tus_id,))
        row = cur.fetchone()
        if row is None:
            return None
        names = [c[0] for c in cur.description]
    return dict(zip(names, row, strict=True))


def part_objects(stack: Stack, location: str) -> list[Any]:
    return stack.objects("dropzone", "tus/" + location.rstrip("/").rsplit("/", 1)[-1])


def csv_bytes(size: int) -> bytes:
    line = ("社員番号,氏名," + os.urandom(16).hex() + "\n").encode()
    return (line * (size // len(line) + 1))[:size]


@pytest.fixture
def client(stack: Stack, acme_token: str) -> Tus:
    return Tus(stack, token=acme_token)


# -- discovery and version --------------------------------------------------------


def test_options_advertises_version_extensions_and_max_size(client: Tus, stack: Stack) -> None:
    r = client.request("OPTIONS", TUS)
    assert r.status_code == 204, r.text
    assert r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "termination",
                                                           "expiration"}
    assert int(r.headers["Tus-Max-Size"]) == int(stack.env["KINKO_MAX_UPLOAD_BYTES"])
    # Deny by default: no token, no answer.
    anon = requests.options(client.url(TUS), verify=stack.cert, timeout=30)
    error(anon, 401, "unauthorized")


def test_tus_resumable_header_is_required(client: Tus, stack: Stack) -> None:
    before = rejected(stack, "tus_version")
    for value in (None, "0.2.2"):
        headers = {"Authorization": client.headers["Authorization"],
                   "Upload-Length": "10", "Upload-Metadata": meta("a.csv")}
        if value:
            headers["Tus-Resumable"] = value
        r = requests.post(client.url(TUS), headers=headers, verify=stack.cert, timeout=30)
        body = error(r, 412, "tus_version")
        assert r.headers["Tus-Version"] == "1.0.0"
        assert "Tus-Resumable" in body["message"]
    assert rejected(stack, "tus_version") == before + 2


# -- the whole way, in chunks ---------------------------------------------------------


def test_chunks_become_an_ordinary_upload_scanned_clean(client: Tus, stack: Stack,
                                                        acme_token: str) -> None:
    data = csv_bytes(3 * (1 << 20) + 12345)
    chunk = 1 << 20
    location = client.create(len(data), "給与台帳.csv")
    head = client.head(location)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert "no-store" in head.headers["Cache-Control"]
    expires = parsedate_to_datetime(head.headers["Upload-Expires"]).timestamp()
    assert 23 * 3600 < expires - time.time() <= 24 * 3600 + 60

    offset = 0
    while offset + chunk < len(data):
        r = client.patch(location, offset, data[offset:offset + chunk])
        assert r.status_code == 204, r.text
        assert "Kinko-Upload-Id" not in r.headers
        offset = int(r.headers["Upload-Offset"])
        assert client.head(location).headers["Upload-Offset"] == str(offset)
        # Each part is ciphertext: no plaintext at rest, not even for a moment.
        objects = part_objects(stack, location)
        assert objects and all(data[:64] not in o.read_bytes() for o in objects)
        assert all(b"\xe7\xa4\xbe\xe5\x93\xa1" not in o.read_bytes() for o in objects)
    r = client.patch(location, offset, data[offset:])
    assert r.status_code == 204, r.text
    assert r.headers["Upload-Offset"] == str(len(data))
    upload_id = r.headers["Kinko-Upload-Id"]

    body = stack.wait_for(acme_token, upload_id, {"clean"}, timeout=120)
    assert body["filename"] == "給与台帳.csv"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["purpose"] == "koyo"
    # The parts are gone; the tus resource remembers the upload it became.
    assert part_objects(stack, location) == []
    row = tus_row(stack, location)
    assert row is not None and row["upload_id"] == upload_id
    assert row["received"] == len(data) and row["parts"] == 4
    head = client.head(location)
    assert head.headers["Upload-Offset"] == str(len(data))
    assert head.headers["Kinko-Upload-Id"] == upload_id
    # An empty PATCH at the end is harmless (a client whose answer was lost).
    again = client.patch(location, len(data), b"")
    assert again.status_code == 204 and again.headers["Kinko-Upload-Id"] == upload_id
    with stack.db() as db:
        actions = [a for (a,) in db.execute(
            "SELECT action FROM audit_events WHERE upload_id = ? ORDER BY id", (upload_id,))]
        created = db.execute("SELECT details FROM audit_events WHERE action = ? "
                             "ORDER BY id DESC LIMIT 1", ("client:tus:created",)).fetchone()
    assert actions[:2] == ["client:tus:completed", "client:upload:received"], actions
    assert "給与" not in created[0] and "csv" not in created[0]


def test_eicar_sent_in_two_pieces_is_infected(client: Tus, stack: Stack,
                                              acme_token: str) -> None:
    data = eicar()
    upload_id = client.send(data, "eicar.csv", chunk=len(data) // 2 + 1)
    body = stack.wait_for(acme_token, upload_id, {"infected", "refused", "clean"},
                          timeout=120)
    assert body["status"] == "infected", body
    assert body["sha256"] == hashlib.sha256(data).hexdigest()


# -- refusals ------------------------------------------------------------------------


def test_offset_type_and_header_refusals(client: Tus, stack: Stack) -> None:
    data = csv_bytes(4096)
    location = client.create(len(data), "a.csv")
    assert client.patch(location, 0, data[:1000]).status_code == 204
    before = rejected(stack, "offset_mismatch")
    for wrong in (0, 999, 1001, 4096):
        r = client.patch(location, wrong, data[wrong:wrong + 10])
        body = error(r, 409, "offset_mismatch")
        assert "HEAD" in body["message"]
    assert rejected(stack, "offset_mismatch") == before + 4
    assert client.head(location).headers["Upload-Offset"] == "1000"
    r = client.patch(location, 1000, data[1000:], **{"Content-Type": "application/octet-stream"})
    error(r, 415, "bad_content_type")
    error(client.patch(location, 1000, data[1000:], **{"Upload-Offset": "-1"}), 400,
          "bad_offset")
    error(client.patch(location, 1000, data[1000:] + b"x"), 413, "exceeds_length")
    assert client.head(location).headers["Upload-Offset"] == "1000"
    row = tus_row(stack, location)
    assert row is not None and row["received"] == 1000 and row["parts"] == 1


def test_creation_refusals(client: Tus, stack: Stack) -> None:
    too_big = int(stack.env["KINKO_MAX_UPLOAD_BYTES"]) + 1
    before = rejected(stack, "too_large")
    r = client.request("POST", TUS, **{"Upload-Length": str(too_big),
                                       "Upload-Metadata": meta("big.csv")})
    error(r, 413, "too_large")
    assert rejected(stack, "too_large") == before + 1
    cases = [
        ({"Upload-Length": "abc", "Upload-Metadata": meta("a.csv")}, 400, "bad_length"),
        ({"Upload-Defer-Length": "1", "Upload-Metadata": meta("a.csv")}, 400, "bad_length"),
        ({"Upload-Length": "10", "Upload-Metadata": f"filename {b64('a.csv')}"}, 400,
         "bad_metadata"),
        ({"Upload-Length": "10", "Upload-Metadata": "filename !!!,purpose a29nbw=="}, 400,
         "bad_metadata"),
        ({"Upload-Length": "10", "Upload-Metadata": meta("a.csv", "nosuch")}, 400,
         "invalid_purpose"),
        ({"Upload-Length": "0", "Upload-Metadata": meta("a.csv")}, 400, "empty"),
    ]
    for headers, status, code in cases:
        body = error(client.request("POST", TUS, **headers), status, code)
        assert any("\u3040" <= ch <= "\u9fff" for ch in body["message"]), body  # Japanese


def test_termination_deletes_the_parts(client: Tus, stack: Stack) -> None:
    data = csv_bytes(300_000)
    location = client.create(len(data), "途中.csv")
    assert client.patch(location, 0, data[:100_000]).status_code == 204
    assert len(part_objects(stack, location)) == 1
    r = client.request("DELETE", location)
    assert r.status_code == 204, r.text
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert part_objects(stack, location) == []
    assert tus_row(stack, location) is None
    assert client.head(location).status_code == 404
    error(client.patch(location, 100_000, data[100_000:]), 404, "not_found")
    # A whole 8 MiB piece sent to it still reads the 404, not a reset connection
    # (the refused body is drained, bounded: portal/web/base.py).
    error(client.patch(location, 100_000, os.urandom(8 << 20)), 404, "not_found")
    with stack.db() as db:
        (n,) = db.execute("SELECT count(*) FROM audit_events WHERE action = ? AND details "
                          "LIKE ?", ("client:tus:terminated",
                                     f"%{location.rsplit('/', 1)[-1]}%")).fetchone()
    assert n == 1


def test_another_company_cannot_see_or_touch_it(client: Tus, stack: Stack,
                                                beta_token: str) -> None:
    data = csv_bytes(50_000)
    location = client.create(len(data), "acme.csv")
    assert client.patch(location, 0, data[:10_000]).status_code == 204
    beta = Tus(stack, token=beta_token)
    assert beta.head(location).status_code == 404
    error(beta.patch(location, 10_000, data[10_000:]), 404, "not_found")
    error(beta.request("DELETE", location), 404, "not_found")
    assert client.head(location).headers["Upload-Offset"] == "10000"
    assert len(part_objects(stack, location)) == 1
    # Not even a well-formed guess or a traversal attempt gives more than 404.
    for other in (TUS + "0" * 32, TUS + "..%2f..%2fetc", TUS + "x" * 300):
        assert beta.head(other).status_code == 404


def test_expiry_refuses_and_the_reconciler_cleans_up(client: Tus, stack: Stack) -> None:
    data = csv_bytes(20_000)
    location = client.create(len(data), "放置.csv")
    r = client.patch(location, 0, data[:5_000])
    assert r.status_code == 204
    expires = parsedate_to_datetime(r.headers["Upload-Expires"]).timestamp()
    assert expires - time.time() > 23 * 3600
    tus_id = location.rsplit("/", 1)[-1]
    with stack.db() as db:
        db.execute("UPDATE tus_uploads SET expires_at = ? WHERE id = ?",
                   ("2020-01-01 00:00:00.000000", tus_id))
    assert client.head(location).status_code == 410
    error(client.patch(location, 5_000, data[5_000:]), 410, "expired")
    assert len(part_objects(stack, location)) == 1
    stack.kinko("reconcile")
    assert part_objects(stack, location) == []
    assert tus_row(stack, location) is None
    with stack.db() as db:
        rows = db.execute("SELECT actor_kind, details FROM audit_events WHERE action = ?",
                          ("system:tus:expired",)).fetchall()
    mine = [r for r in rows if json.loads(r[1]).get("tus") == tus_id]
    assert len(mine) == 1 and mine[0][0] == "system"
    assert json.loads(mine[0][1])["offset"] == 5_000


# -- a connection cut in the middle of a PATCH -----------------------------------------


def cut_patch(stack: Stack, token: str, location: str, offset: int, declared: int,
              body: bytes) -> None:
    """Send a PATCH declaring ``declared`` bytes, send only ``body``, then drop
    the connection (no answer is read)."""
    parts = urlsplit(stack.client_url)
    ctx = ssl.create_default_context(cafile=stack.cert)
    raw = socket.create_connection((parts.hostname, parts.port), timeout=30)
    tls = ctx.wrap_socket(raw, server_hostname=parts.hostname)
    head = (f"PATCH {location} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {OFFSET_TYPE}\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {declared}\r\n\r\n")
    tls.sendall(head.encode() + body)
    time.sleep(0.3)
    tls.close()


def test_dropped_patch_keeps_what_arrived_and_nothing_is_resent(
        client: Tus, stack: Stack, acme_token: str) -> None:
    """Decision (portal/tus.py): the prefix of a broken PATCH body is kept,
    sealed as a shorter part, because TLS authenticated every byte of it and
    tus 1.0.0 asks servers to store as much as they received.  HEAD then
    tells the client where to go on, so nothing is sent twice."""
    data = csv_bytes(2 * (1 << 20))
    location = client.create(len(data), "切断.csv")
    sent = 700_001
    cut_patch(stack, acme_token, location, 0, 1 << 20, data[:sent])
    deadline = time.monotonic() + 30
    while int(client.head(location).headers["Upload-Offset"]) != sent:
        assert time.monotonic() < deadline, client.head(location).headers
        time.sleep(0.2)
    # Resume from the server's offset; finish.
    offset = sent
    while offset < len(data):
        r = client.patch(location, offset, data[offset:offset + (1 << 20)])
        assert r.status_code == 204, r.text
        offset = int(r.headers["Upload-Offset"])
    upload_id = r.headers["Kinko-Upload-Id"]
    body = stack.wait_for(acme_token, upload_id, {"clean"}, timeout=120)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    row = tus_row(stack, location)
    # Every byte the server read was kept: nothing was re-sent or discarded.
    assert row is not None and row["received"] == len(data), row


def test_cut_before_any_byte_stores_nothing(client: Tus, stack: Stack,
                                            acme_token: str) -> None:
    data = csv_bytes(10_000)
    location = client.create(len(data), "zero.csv")
    cut_patch(stack, acme_token, location, 0, len(data), b"")
    time.sleep(0.5)
    assert client.head(location).headers["Upload-Offset"] == "0"
    assert part_objects(stack, location) == []


# -- the browser's way: session cookie and CSRF header -----------------------------


def test_session_needs_the_csrf_header(stack: Stack, acme_token: str) -> None:
    session = stack.client("acme", "hr", "acme-Passw0rd")
    csrf = csrf_from(session.get(stack.client_url + "/").text)
    no_csrf = Tus(stack, session=session)
    r = no_csrf.request("POST", TUS, **{"Upload-Length": "10",
                                        "Upload-Metadata": meta("s.csv")})
    error(r, 400, "csrf")
    with_csrf = Tus(stack, session=session, csrf=csrf)
    data = csv_bytes(5000)
    location = with_csrf.create(len(data), "s.csv")
    error(no_csrf.patch(location, 0, data), 400, "csrf")
    assert client_offset(with_csrf, location) == 0
    upload_id = with_csrf.send(data, "session.csv", chunk=2000)
    assert stack.wait_for(acme_token, upload_id, {"clean"}, timeout=120)["size"] == len(data)


def client_offset(t: Tus, location: str) -> int:
    return int(t.head(location).headers["Upload-Offset"])
