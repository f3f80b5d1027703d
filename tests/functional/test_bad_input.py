"""Bad input over real HTTPS: too large, empty, malformed requests, refused types.

Every refusal is a specific status and error code, stores nothing, and is
never a 500 or a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from . import harness
from .harness import Stack, csrf_from

# The Japanese texts of the catalogue (portal/translations/ja/LC_MESSAGES/messages.po).
JA_NO_FILE = "アップロードするファイルを選んでください。"  # Please choose a file to upload.
JA_NO_PURPOSE = "利用目的を選んでください。"  # Please choose a purpose of use.
JA_EMPTY = "ファイルの中身が空です。"  # The file is empty.

API_HEADERS = {"Content-Type": "application/octet-stream", "X-Purpose": "koyo",
               "Content-Disposition": "attachment; filename*=UTF-8''data.csv"}


def unique_csv() -> bytes:
    return f"name,value\n{uuid.uuid4()},{os.urandom(8).hex()}\n".encode()


def assert_not_500(resp: requests.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    assert "Traceback" not in resp.text


def assert_api_error(resp: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert_not_500(resp)
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return dict(body)


def rejected_count(stack: Stack, reason: str) -> int:
    """Audit rows ``client:upload:rejected`` with this reason."""
    with stack.db() as db:
        rows = db.execute("SELECT details FROM audit_events WHERE action = ?",
                          ("client:upload:rejected",)).fetchall()
    return sum(1 for (details,) in rows if json.loads(details).get("reason") == reason)


def partials(stack: Stack) -> list[Path]:
    root = stack.home / "dropzone" / "partial"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def wait_no_partials(stack: Stack, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while partials(stack):
        if time.monotonic() > deadline:
            raise AssertionError(f"partial drop-zone files left: {partials(stack)}")
        time.sleep(0.1)


def api_post(stack: Stack, token: str | None, data: Any, headers: dict[str, str]
             ) -> requests.Response:
    h = dict(headers)
    if token:
        h["Authorization"] = f"Bearer {token}"
    return requests.post(stack.client_url + "/api/v1/uploads", data=data, headers=h,
                         verify=stack.cert, timeout=120, allow_redirects=False)


@pytest.fixture
def dropzone_unchanged(stack: Stack) -> Iterator[None]:
    """The test must leave no new drop-zone object and no partial write behind."""
    before = stack.objects("dropzone")
    yield
    wait_no_partials(stack)
    assert stack.objects("dropzone") == before


# -- too large ----------------------------------------------------------------------------


def _read_response(sock: ssl.SSLSocket) -> tuple[str, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return lines[0], headers, rest[:length]


def _raw_post(stack: Stack, path: str, headers: dict[str, str], body: bytes
              ) -> tuple[str, dict[str, str], bytes, float]:
    """Send headers and only ``body`` (less than declared); return the answer and its delay."""
    port = urlsplit(stack.client_url).port
    assert port is not None
    ctx = ssl.create_default_context(cafile=stack.cert)
    head = f"POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    started = time.monotonic()
    with socket.create_connection(("localhost", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.settimeout(10)
        sock.sendall(head.encode() + body)
        status, answer_headers, answer = _read_response(sock)
    return status, answer_headers, answer, time.monotonic() - started


def test_declared_too_large_is_refused_before_the_body(stack: Stack, acme_token: str,
                                                       dropzone_unchanged: None) -> None:
    before = rejected_count(stack, "too_large")
    status, headers, body, took = _raw_post(stack, "/api/v1/uploads", {
        "Authorization": f"Bearer {acme_token}",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": "attachment; filename=\"big.csv\"",
        "X-Purpose": "koyo",
        "Content-Length": str(harness.MAX_UPLOAD + 1)}, b"a" * 1024)  # and never the rest
    assert took < 10
    assert status.split(" ")[1] == "413", status
    assert headers["content-type"].startswith("application/json"), headers
    answer = json.loads(body)
    assert answer["error"] == "too_large", answer
    assert answer["message"]
    assert b"Traceback" not in body
    # Audited exactly once.
    assert rejected_count(stack, "too_large") == before + 1


def test_declared_too_large_form_is_refused_before_the_body(stack: Stack,
                                                            dropzone_unchanged: None) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    room = s.get(stack.client_url + "/")
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    boundary = "kinkotestboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n"
            f"{csrf_from(room.text)}\r\n--{boundary}\r\nContent-Disposition: form-data; "
            f"name=\"purpose\"\r\n\r\nkoyo\r\n--{boundary}\r\nContent-Disposition: "
            f"form-data; name=\"file\"; filename=\"big.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\n").encode() + b"a" * 1024
    status, headers, body, took = _raw_post(stack, "/uploads", {
        "Cookie": cookie, "Referer": stack.client_url + "/",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(harness.MAX_UPLOAD + (2 << 20))}, part)
    assert took < 10
    assert status.split(" ")[1] == "413", (status, body[:300])
    assert b"Traceback" not in body


def test_two_files_in_one_form_are_refused(stack: Stack, dropzone_unchanged: None) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    room = s.get(stack.client_url + "/")
    before = rejected_count(stack, "one_file")
    r = s.post(stack.client_url + "/uploads", allow_redirects=False, timeout=60,
               data={"csrf_token": csrf_from(room.text), "purpose": "koyo"},
               files=[("file", ("a.csv", unique_csv(), "text/csv")),
                      ("file", ("b.csv", unique_csv(), "text/csv"))])
    assert_not_500(r)
    assert r.status_code == 303, (r.status_code, r.text[:300])
    assert "ファイルは1件ずつアップロードしてください" in s.get(stack.client_url + "/").text
    assert rejected_count(stack, "one_file") == before + 1


def test_chunked_too_large_is_refused(stack: Stack, acme_token: str,
                                      dropzone_unchanged: None) -> None:
    block = os.urandom(1 << 20)
    total = harness.MAX_UPLOAD + (256 << 10)

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            part = block[: total - sent]
            sent += len(part)
            yield part

    before = rejected_count(stack, "too_large")
    r = api_post(stack, acme_token, body(), API_HEADERS)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request.headers
    assert_api_error(r, 413, "too_large")
    assert rejected_count(stack, "too_large") == before + 1


def test_chunked_within_the_limit_is_accepted(stack: Stack, acme_token: str) -> None:
    # The counterpart: a chunked body is read (not taken as empty).
    data = unique_csv()
    r = api_post(stack, acme_token, iter([data[:10], data[10:]]), API_HEADERS)
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(data)


# -- empty and malformed API requests -----------------------------------------------------


def test_empty_file_is_refused(stack: Stack, acme_token: str,
                               dropzone_unchanged: None) -> None:
    before = rejected_count(stack, "empty")
    assert_api_error(api_post(stack, acme_token, b"", API_HEADERS), 400, "empty")
    assert rejected_count(stack, "empty") == before + 1


@pytest.mark.parametrize("purpose", [None, "", "nope", "../koyo"])
def test_missing_or_unknown_purpose(stack: Stack, acme_token: str, purpose: str | None,
                                    dropzone_unchanged: None) -> None:
    headers = {k: v for k, v in API_HEADERS.items() if k != "X-Purpose"}
    if purpose is not None:
        headers["X-Purpose"] = purpose
    before = rejected_count(stack, "invalid_purpose")
    assert_api_error(api_post(stack, acme_token, unique_csv(), headers), 400,
                     "invalid_purpose")
    assert rejected_count(stack, "invalid_purpose") == before + 1


@pytest.mark.parametrize("content_type", [None, "text/csv", "multipart/form-data; boundary=x",
                                          "application/json"])
def test_wrong_content_type_is_415(stack: Stack, acme_token: str, content_type: str | None,
                                   dropzone_unchanged: None) -> None:
    headers = {k: v for k, v in API_HEADERS.items() if k != "Content-Type"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert_api_error(api_post(stack, acme_token, unique_csv(), headers), 415,
                     "type_not_allowed")


@pytest.mark.parametrize("disposition", [
    None, "attachment", "attachment; filename=", "attachment; filename*=ISO-8859-1''a.csv",
    "attachment; filename*=UTF-8''%ff%fe.csv",
])
def test_missing_or_bad_content_disposition(stack: Stack, acme_token: str,
                                            disposition: str | None,
                                            dropzone_unchanged: None) -> None:
    headers = {k: v for k, v in API_HEADERS.items() if k != "Content-Disposition"}
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    assert_api_error(api_post(stack, acme_token, unique_csv(), headers), 400, "bad_filename")


# -- the browser form -----------------------------------------------------------------------


def _form_post(stack: Stack, session: requests.Session, data: dict[str, str],
               files: dict[str, Any] | None) -> requests.Response:
    room = session.get(stack.client_url + "/")
    assert room.status_code == 200
    r = session.post(stack.client_url + "/uploads",
                     data={"csrf_token": csrf_from(room.text), **data},
                     files=files, allow_redirects=False, timeout=60)
    assert_not_500(r)
    return r


def _flashed_on_room(stack: Stack, session: requests.Session, r: requests.Response,
                     text: str) -> None:
    assert r.status_code in (302, 303), (r.status_code, r.text[:300])
    assert urlsplit(r.headers["Location"]).path == "/", r.headers
    room = session.get(stack.client_url + "/", allow_redirects=False)
    assert room.status_code == 200
    assert 'class="flash error"' in room.text
    assert text in room.text, room.text[-2000:]
    # Flashed once: gone on the next view.
    assert text not in session.get(stack.client_url + "/").text


@pytest.mark.parametrize("variant", ["no_part", "empty_part"])
def test_form_without_file(stack: Stack, variant: str, dropzone_unchanged: None) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    assert JA_NO_FILE not in s.get(stack.client_url + "/").text
    before = rejected_count(stack, "no_file")
    # A browser with no file chosen sends an empty part with filename="".
    files = {"file": ("", b"", "application/octet-stream")} if variant == "empty_part" \
        else {"other": ("x.txt", b"not the file field", "text/plain")}
    r = _form_post(stack, s, {"purpose": "koyo"}, files)
    _flashed_on_room(stack, s, r, JA_NO_FILE)
    assert rejected_count(stack, "no_file") == before + 1


def test_form_without_purpose(stack: Stack, dropzone_unchanged: None) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    assert JA_NO_PURPOSE not in s.get(stack.client_url + "/").text
    before = rejected_count(stack, "invalid_purpose")
    r = _form_post(stack, s, {"purpose": ""},
                   {"file": ("a.csv", unique_csv(), "text/csv")})
    _flashed_on_room(stack, s, r, JA_NO_PURPOSE)
    assert rejected_count(stack, "invalid_purpose") == before + 1


def test_form_empty_file(stack: Stack, dropzone_unchanged: None) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    before = rejected_count(stack, "empty")
    r = _form_post(stack, s, {"purpose": "koyo"},
                   {"file": ("a.csv", b"", "text/csv")})
    _flashed_on_room(stack, s, r, JA_EMPTY)
    assert rejected_count(stack, "empty") == before + 1


# -- the type policy, applied by the worker ----------------------------------------------------


def _refused(stack: Stack, token: str, data: bytes, filename: str, reason: str) -> None:
    r = stack.api_upload(token, data, filename)
    assert r.status_code == 201, r.text  # accepted for checking...
    upload_id = r.json()["id"]
    body = stack.wait_for(token, upload_id, {"refused", "infected", "clean", "vaulted"})
    assert body["status"] == "refused", body  # ...and refused by the policy
    assert body["reason_code"] == reason, body
    assert isinstance(body["reason"], str) and body["reason"].strip(), body
    assert [e["status"] for e in body["events"]][-1] == "refused", body
    # The drop-zone copy is deleted and nothing reached the vault.
    deadline = time.monotonic() + 10
    while stack.objects("dropzone", f"dz/{upload_id}"):
        assert time.monotonic() < deadline, "drop-zone copy of a refused upload remains"
        time.sleep(0.1)
    assert not stack.objects("vault", f"vault/{upload_id}")
    assert not any(upload_id in p.name for p in stack.objects("vault"))


def test_windows_executable_named_pdf_is_refused(stack: Stack, acme_token: str) -> None:
    exe = b"MZ\x90\x00\x03\x00\x00\x00" + os.urandom(4096)
    _refused(stack, acme_token, exe, "x.pdf", "type_not_allowed")


def test_pdf_named_xlsx_is_refused(stack: Stack, acme_token: str) -> None:
    pdf = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
           + f"% {uuid.uuid4()}\n".encode() + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")
    _refused(stack, acme_token, pdf, "x.xlsx", "extension_mismatch")


def test_refusal_reasons_differ(stack: Stack, acme_token: str) -> None:
    # The reason text is specific to the code, in the default language (Japanese).
    r = requests.get(stack.client_url + "/api/v1/uploads", verify=stack.cert, timeout=30,
                     headers={"Authorization": f"Bearer {acme_token}"})
    assert r.status_code == 200
    reasons = {u["reason_code"]: u["reason"] for u in r.json()["uploads"]
               if u["status"] == "refused"}
    assert {"type_not_allowed", "extension_mismatch"} <= set(reasons), reasons
    assert reasons["type_not_allowed"] != reasons["extension_mismatch"]
    assert all(any("\u3040" <= c <= "\u30ff" for c in text) for text in reasons.values()), \
        reasons


def test_an_interrupted_upload_is_not_kept(stack: Stack, acme_token: str,
                                           dropzone_unchanged: None) -> None:
    """Half the declared body, then the client hangs up: nothing is stored."""
    port = urlsplit(stack.client_url).port
    assert port is not None
    body = unique_csv() * 2000
    head = (f"POST /api/v1/uploads HTTP/1.1\r\nHost: localhost:{port}\r\n"
            f"Authorization: Bearer {acme_token}\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Disposition: attachment; filename*=UTF-8''cut.csv\r\n"
            f"X-Purpose: koyo\r\nContent-Length: {len(body)}\r\n\r\n")
    before = rejected_count(stack, "truncated")
    listed_before = {u["id"] for u in requests.get(
        stack.client_url + "/api/v1/uploads", headers={"Authorization": f"Bearer {acme_token}"},
        verify=stack.cert, timeout=30).json()["uploads"]}
    ctx = ssl.create_default_context(cafile=stack.cert)
    with socket.create_connection(("localhost", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(head.encode() + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)  # the client is gone
        try:
            sock.recv(65536)
        except OSError:
            pass
    deadline = time.monotonic() + 15
    while rejected_count(stack, "truncated") == before:
        assert time.monotonic() < deadline, "the interrupted upload was not refused"
        time.sleep(0.2)
    listed_after = {u["id"] for u in requests.get(
        stack.client_url + "/api/v1/uploads", headers={"Authorization": f"Bearer {acme_token}"},
        verify=stack.cert, timeout=30).json()["uploads"]}
    assert listed_after == listed_before
