"""Who may see what, over real HTTPS: companies, handlers, anonymous callers.

Runs against the session stack (``kinko serve`` + a real clamd).
"""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from .harness import Stack, csrf_from


def unique_csv() -> bytes:
    # clamd caches verdicts by content: every test file is new.
    return f"name,value\n{uuid.uuid4()},{os.urandom(8).hex()}\n".encode()


def assert_not_500(resp: requests.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    assert "Traceback" not in resp.text


def assert_login_redirect(resp: requests.Response, what: str = "") -> None:
    assert resp.status_code in (302, 303), (what, resp.status_code, resp.text[:300])
    assert urlsplit(resp.headers["Location"]).path == "/login", (what, resp.headers)


def assert_unauthorized(resp: requests.Response, what: str = "") -> None:
    assert resp.status_code == 401, (what, resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/json"), what
    body = resp.json()
    assert body["error"] == "unauthorized", (what, body)
    assert body["message"], what


def get(url: str, stack: Stack, **kw: Any) -> requests.Response:
    return requests.get(url, verify=stack.cert, allow_redirects=False, timeout=30, **kw)


def post(url: str, stack: Stack, **kw: Any) -> requests.Response:
    return requests.post(url, verify=stack.cert, allow_redirects=False, timeout=30, **kw)


def browser(stack: Stack, base: str) -> requests.Session:
    """A fresh cookie session that sends the same-origin Referer a browser sends."""
    s = requests.Session()
    s.trust_env = False  # env CA bundles would override verify
    s.verify = stack.cert
    s.headers["Referer"] = base + "/"
    return s


def api_list(stack: Stack, token: str) -> list[str]:
    r = get(stack.client_url + "/api/v1/uploads", stack,
            headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return [u["id"] for u in r.json()["uploads"]]


@pytest.fixture(scope="module")
def acme_upload(stack: Stack, acme_token: str) -> str:
    """A clean acme upload."""
    r = stack.api_upload(acme_token, unique_csv(), "acme.csv")
    assert r.status_code == 201, r.text
    upload_id = str(r.json()["id"])
    stack.wait_for(acme_token, upload_id, {"clean"})
    return upload_id


@pytest.fixture(scope="module")
def beta_upload(stack: Stack, beta_token: str) -> str:
    """A clean beta upload (hana serves acme only)."""
    r = stack.api_upload(beta_token, unique_csv(), "beta.csv")
    assert r.status_code == 201, r.text
    upload_id = str(r.json()["id"])
    stack.wait_for(beta_token, upload_id, {"clean"})
    return upload_id


# -- companies ---------------------------------------------------------------------


def test_other_company_upload_is_404_over_the_api(stack: Stack, acme_upload: str,
                                                  acme_token: str, beta_token: str) -> None:
    r = get(f"{stack.client_url}/api/v1/uploads/{acme_upload}", stack,
            headers={"Authorization": f"Bearer {beta_token}"})
    assert r.status_code == 404, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "not_found"
    assert acme_upload not in r.text
    # The owner sees it.
    assert stack.status(acme_token, acme_upload)["id"] == acme_upload


def test_other_company_upload_is_404_in_the_browser(stack: Stack, acme_upload: str) -> None:
    beta = stack.client("beta", "hr", "beta-Passw0rd")
    r = beta.get(f"{stack.client_url}/uploads/{acme_upload}", allow_redirects=False)
    assert r.status_code == 404, r.status_code
    assert "acme.csv" not in r.text
    assert_not_500(r)
    acme = stack.client("acme", "hr", "acme-Passw0rd")
    r = acme.get(f"{stack.client_url}/uploads/{acme_upload}", allow_redirects=False)
    assert r.status_code == 200
    assert "acme.csv" in r.text
    # And the room list of beta does not link to it.
    assert acme_upload not in beta.get(stack.client_url + "/").text


def test_lists_show_only_own_company(stack: Stack, acme_upload: str, beta_upload: str,
                                     acme_token: str, beta_token: str) -> None:
    acme_ids, beta_ids = api_list(stack, acme_token), api_list(stack, beta_token)
    assert acme_upload in acme_ids and beta_upload not in acme_ids
    assert beta_upload in beta_ids and acme_upload not in beta_ids


# -- handlers -------------------------------------------------------------------------


def test_handler_sees_only_assigned_companies(stack: Stack, acme_upload: str,
                                              beta_upload: str, beta_token: str) -> None:
    hana = stack.office("hana")
    inbox = hana.get(stack.office_url + "/", allow_redirects=False)
    assert inbox.status_code == 200
    assert acme_upload in inbox.text
    assert beta_upload not in inbox.text
    assert "ベータ商事株式会社" not in inbox.text

    r = hana.get(f"{stack.office_url}/uploads/{beta_upload}", allow_redirects=False)
    assert r.status_code == 404, r.status_code
    assert "beta.csv" not in r.text
    assert hana.get(f"{stack.office_url}/uploads/{acme_upload}",
                    allow_redirects=False).status_code == 200

    token = csrf_from(inbox.text)
    r = hana.post(f"{stack.office_url}/uploads/{beta_upload}/pull",
                  data={"csrf_token": token}, allow_redirects=False,
                  headers={"Referer": stack.office_url + "/"})
    assert r.status_code == 404, (r.status_code, r.text[:300])
    assert_not_500(r)
    # Nothing happened to it: still clean, never vaulted.
    assert stack.status(beta_token, beta_upload)["status"] == "clean"
    assert not stack.objects("vault", f"vault/{beta_upload}")

    boss = stack.office("boss")
    inbox = boss.get(stack.office_url + "/", allow_redirects=False)
    assert inbox.status_code == 200
    assert acme_upload in inbox.text and beta_upload in inbox.text
    assert boss.get(f"{stack.office_url}/uploads/{beta_upload}",
                    allow_redirects=False).status_code == 200


# -- anonymous --------------------------------------------------------------------------


@pytest.mark.parametrize("app,method,path", [
    ("client", "GET", "/"),
    ("client", "GET", "/uploads/x"),
    ("client", "POST", "/uploads"),
    ("client", "POST", "/logout"),
    ("office", "GET", "/"),
    ("office", "GET", "/uploads/x"),
    ("office", "POST", "/uploads/x/pull"),
    ("office", "POST", "/uploads/x/download"),
    ("office", "GET", "/companies"),
])
def test_anonymous_pages_redirect_to_login(stack: Stack, app: str, method: str,
                                           path: str) -> None:
    base = stack.client_url if app == "client" else stack.office_url
    # A POST without any CSRF token: the guard must answer first (no 400).
    r = requests.request(method, base + path, verify=stack.cert, allow_redirects=False,
                         timeout=30, data={"purpose": "koyo"} if method == "POST" else None)
    assert_login_redirect(r, f"{app} {method} {path}")


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/uploads"),
    ("GET", "/api/v1/uploads/x"),
    ("GET", "/api/v1/purposes"),
    ("POST", "/api/v1/uploads"),
])
@pytest.mark.parametrize("auth", [None, "Bearer knk_xxx", "Bearer not-a-token", "Basic eDp4"])
def test_api_without_valid_token_is_401(stack: Stack, method: str, path: str,
                                        auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    if method == "POST":
        headers.update({"Content-Type": "application/octet-stream", "X-Purpose": "koyo",
                        "Content-Disposition": "attachment; filename=a.csv"})
    before = len(stack.objects("dropzone"))
    r = requests.request(method, stack.client_url + path, headers=headers, verify=stack.cert,
                         allow_redirects=False, timeout=30,
                         data=unique_csv() if method == "POST" else None)
    assert_unauthorized(r, f"{method} {path} {auth}")
    assert len(stack.objects("dropzone")) == before


def test_office_ignores_client_bearer_tokens(stack: Stack, acme_token: str) -> None:
    r = get(stack.office_url + "/", stack, headers={"Authorization": f"Bearer {acme_token}"})
    assert_login_redirect(r)


# -- CSRF on cookie-session API calls ------------------------------------------------


def test_cookie_session_api_post_needs_csrf_header(stack: Stack) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    headers = {"Content-Type": "application/octet-stream", "X-Purpose": "koyo",
               "Content-Disposition": "attachment; filename*=UTF-8''csrf.csv",
               "Referer": stack.client_url + "/"}
    before = len(stack.objects("dropzone"))
    r = s.post(stack.client_url + "/api/v1/uploads", data=unique_csv(), headers=headers,
               allow_redirects=False)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"] == "csrf"
    assert len(stack.objects("dropzone")) == before

    r = s.post(stack.client_url + "/api/v1/uploads", data=unique_csv(), allow_redirects=False,
               headers={**headers, "X-CSRFToken": "not-the-token"})
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"] == "csrf"
    assert len(stack.objects("dropzone")) == before

    room = s.get(stack.client_url + "/")
    r = s.post(stack.client_url + "/api/v1/uploads", data=unique_csv(), allow_redirects=False,
               headers={**headers, "X-CSRFToken": csrf_from(room.text)})
    assert r.status_code == 201, (r.status_code, r.text[:300])
    body = r.json()
    assert body["filename"] == "csrf.csv" and body["status"] in ("received", "scanning",
                                                                "clean")
    assert stack.objects("dropzone", f"dz/{body['id']}")


# -- the second factor ------------------------------------------------------------------


def test_office_totp_step_cannot_be_skipped(stack: Stack) -> None:
    s = browser(stack, stack.office_url)
    page = s.get(stack.office_url + "/login")
    r = s.post(stack.office_url + "/login", data={
        "login": "boss", "password": "Passw0rd-boss", "csrf_token": csrf_from(page.text)},
        allow_redirects=False)
    assert r.status_code == 302
    assert urlsplit(r.headers["Location"]).path == "/totp"
    for path in ("/", "/companies", "/uploads/x"):
        assert_login_redirect(s.get(stack.office_url + path, allow_redirects=False), path)
    # A wrong code does not log in either.
    page = s.get(stack.office_url + "/totp")
    assert page.status_code == 200
    r = s.post(stack.office_url + "/totp", data={"code": "000000",
                                                 "csrf_token": csrf_from(page.text)},
               allow_redirects=False)
    assert r.status_code == 401
    assert_login_redirect(s.get(stack.office_url + "/", allow_redirects=False))


# -- headers and cookies -------------------------------------------------------------------


def assert_security_headers(resp: requests.Response, *, authenticated: bool) -> None:
    h = resp.headers
    csp = h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "max-age=" in h["Strict-Transport-Security"]
    assert h["X-Content-Type-Options"] == "nosniff"
    # The CSRF check (SSL strict) needs browsers to send a same-origin Referer.
    assert h["Referrer-Policy"] in ("same-origin", "strict-origin",
                                    "strict-origin-when-cross-origin")
    if authenticated:
        assert "no-store" in h["Cache-Control"]


def test_security_headers(stack: Stack, acme_token: str) -> None:
    s = stack.client("acme", "hr", "acme-Passw0rd")
    room = s.get(stack.client_url + "/", allow_redirects=False)
    assert room.status_code == 200
    assert_security_headers(room, authenticated=True)
    api = get(stack.client_url + "/api/v1/uploads", stack,
              headers={"Authorization": f"Bearer {acme_token}"})
    assert api.status_code == 200
    assert_security_headers(api, authenticated=True)
    inbox = stack.office("boss").get(stack.office_url + "/", allow_redirects=False)
    assert inbox.status_code == 200
    assert_security_headers(inbox, authenticated=True)
    # Error answers carry them too.
    assert_security_headers(get(stack.client_url + "/api/v1/uploads", stack),
                            authenticated=False)
    assert_security_headers(get(stack.client_url + "/login", stack), authenticated=False)


@pytest.mark.parametrize("app", ["client", "office"])
def test_session_cookies_are_host_prefixed_secure_httponly(stack: Stack, app: str) -> None:
    s = browser(stack, stack.client_url if app == "client" else stack.office_url)
    if app == "client":
        page = s.get(stack.client_url + "/login")
        r = s.post(stack.client_url + "/login", data={
            "company": "acme", "login": "hr", "password": "acme-Passw0rd",
            "csrf_token": csrf_from(page.text)}, allow_redirects=False)
        name = "__Host-kinko-client"
    else:
        page = s.get(stack.office_url + "/login")
        r = s.post(stack.office_url + "/login", data={
            "login": "boss", "password": "Passw0rd-boss", "csrf_token": csrf_from(page.text)},
            allow_redirects=False)
        name = "__Host-kinko-office"
    assert r.status_code == 302
    raw = [v for k, v in r.raw.headers.items() if k.lower() == "set-cookie"]
    session_cookies = [c for c in raw if "kinko-" in c.split("=", 1)[0]]
    assert session_cookies, raw
    for cookie in session_cookies:
        assert cookie.startswith("__Host-"), cookie
        assert cookie.split("=", 1)[0] == name
        attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
        assert "secure" in attrs and "httponly" in attrs, cookie
        assert "path=/" in attrs, cookie
        assert not any(a.startswith("domain=") for a in attrs), cookie


# -- the handling log -----------------------------------------------------------------------


def test_zz_audit_chain_verifies(stack: Stack) -> None:
    out = stack.kinko("audit", "verify").stdout
    assert "intact" in out, out
