"""Deny-by-default, proven over the URL maps of both apps (in process, no network).

Every rule of the client app and of the office app is requested anonymously:
anything outside the explicitly public endpoints must be refused by the
guard (401 JSON under /api/, a redirect to /login elsewhere).  A session of
one app must not open the other, and only the office role loads the vault
private key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyotp
import pytest
from flask import Flask, url_for
from flask.testing import FlaskClient

import portal.client
import portal.office
from portal.auth.passwords import hash_password
from portal.instance import init_instance
from portal.models import ClientUser, Company, Staff
from portal.services import build_services
from portal.settings import Settings

BASE = "https://localhost"
CLIENT_COOKIE = "__Host-kinko-client"
OFFICE_COOKIE = "__Host-kinko-office"
PASSWORD = "Unit-Passw0rd"  # noqa: S105 - a test account

# Adding a public endpoint must be a deliberate change: update these sets.
# totp and totp_enrol check the pending sign-in state themselves.
CLIENT_PUBLIC = {"login", "totp", "totp_enrol", "openapi", "static", "set_language"}
OFFICE_PUBLIC = {"login", "totp", "totp_enrol", "static", "set_language"}


@dataclass
class Instance:
    settings: Settings
    totp_secret: str


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Instance:
    home: Path = tmp_path_factory.mktemp("kinko-home")
    settings = Settings.from_env({"KINKO_HOME": str(home),
                                  "KINKO_CLAMD": "unix:///nonexistent/clamd.sock"})
    init_instance(settings)
    secret = pyotp.random_base32()
    svc = build_services(settings, "office")
    with svc.sessions() as db, db.begin():
        company = Company(code="acme", name="Acme")
        db.add(company)
        db.flush()
        # Client user 1 and staff 1: same id, same session epoch.  If the two
        # apps shared a session secret, a client cookie would load staff 1.
        db.add(ClientUser(id=1, company_id=company.id, login="hr",
                          password_hash=hash_password(PASSWORD), must_change_password=False))
        db.add(Staff(id=1, login="boss", role="manager", password_hash=hash_password(PASSWORD),
                     totp_secret=secret))
    return Instance(settings, secret)


@pytest.fixture(scope="module")
def client_app(instance: Instance) -> Flask:
    return portal.client.create_app(instance.settings)


@pytest.fixture(scope="module")
def office_app(instance: Instance) -> Flask:
    return portal.office.create_app(instance.settings)


def _guard(app: Flask) -> Any:
    funcs = app.before_request_funcs[None]
    guards = [f for f in funcs if f.__name__ == "guard"]
    assert len(guards) == 1, [f.__name__ for f in funcs]
    return guards[0]


def _dummy(converter: object) -> object:
    """A value the converter accepts: a number, one of an any() list, or a word."""
    name = type(converter).__name__
    if name == "IntegerConverter":
        return 1
    if name == "AnyConverter":
        return sorted(converter.items)[0]  # type: ignore[attr-defined]
    return "dummy"


def _requests(app: Flask) -> Iterator[tuple[str, str, str]]:
    """(endpoint, method, path) for every rule and method, URL arguments filled in."""
    with app.test_request_context(base_url=BASE):
        for rule in app.url_map.iter_rules():
            args = {arg: _dummy(rule._converters[arg]) for arg in rule.arguments}
            path = url_for(rule.endpoint, **args)
            for method in sorted(rule.methods or ()):
                if method in ("HEAD", "OPTIONS"):
                    continue
                yield rule.endpoint, method, path


def _let_through(app: Flask) -> set[str]:
    """The endpoints the guard passes for an anonymous request (called directly)."""
    guard = _guard(app)
    passed = set()
    for endpoint, method, path in _requests(app):
        with app.test_request_context(path, method=method, base_url=BASE):
            if guard() is None:
                passed.add(endpoint)
    return passed


def assert_refused(resp: Any, path: str, what: str) -> None:
    if path.startswith("/api/"):
        assert resp.status_code == 401, (what, resp.status_code, resp.data[:300])
        assert resp.is_json, what
        body = resp.get_json()
        assert body["error"] == "unauthorized", (what, body)
        assert body["message"], what
    else:
        assert resp.status_code == 302, (what, resp.status_code, resp.data[:300])
        assert urlsplit(resp.headers["Location"]).path == "/login", (what, resp.headers)


# -- the public set -----------------------------------------------------------


def test_declared_public_sets() -> None:
    assert portal.client.PUBLIC == {"login", "totp", "totp_enrol", "openapi"}
    assert portal.office.PUBLIC == {"login", "totp", "totp_enrol"}


@pytest.mark.parametrize("which", ["client", "office"])
def test_guard_lets_through_exactly_the_public_set(which: str, client_app: Flask,
                                                   office_app: Flask) -> None:
    app, expected = ((client_app, CLIENT_PUBLIC) if which == "client"
                     else (office_app, OFFICE_PUBLIC))
    assert _let_through(app) == expected
    # And every public endpoint really exists (a renamed view must update the set).
    assert expected <= {r.endpoint for r in app.url_map.iter_rules()}


@pytest.mark.parametrize("which", ["client", "office"])
def test_guard_runs_before_csrf(which: str, client_app: Flask, office_app: Flask) -> None:
    app = client_app if which == "client" else office_app
    names = [f.__name__ for f in app.before_request_funcs[None]]
    assert "csrf_protect" in names, names
    assert names.index("guard") < names.index("csrf_protect"), names


def test_url_maps_have_the_expected_endpoints(client_app: Flask, office_app: Flask) -> None:
    # A guard test over an empty map would prove nothing.
    client = {r.endpoint for r in client_app.url_map.iter_rules()}
    office = {r.endpoint for r in office_app.url_map.iter_rules()}
    assert {"index", "upload_form", "upload_detail", "logout", "api.create_upload",
            "api.get_upload", "api.list_uploads", "api.list_purposes"} <= client
    assert {"index", "upload_detail", "pull", "download", "companies", "logout"} <= office
    # The office app has no API and accepts no uploads.
    assert not any(e.startswith("api.") for e in office)


# -- anonymous requests over the whole URL map -----------------------------------


@pytest.mark.parametrize("which", ["client", "office"])
def test_every_private_rule_refuses_anonymous(which: str, client_app: Flask,
                                              office_app: Flask) -> None:
    app, public = ((client_app, CLIENT_PUBLIC) if which == "client"
                   else (office_app, OFFICE_PUBLIC))
    checked = 0
    for endpoint, method, path in _requests(app):
        if endpoint in public:
            continue
        tc = app.test_client()
        resp = tc.open(path, method=method, base_url=BASE)
        assert_refused(resp, path, f"{which} {method} {path} ({endpoint})")
        assert b"Traceback" not in resp.data
        checked += 1
    assert checked >= (8 if which == "client" else 6)


def test_bogus_bearer_is_refused(client_app: Flask) -> None:
    tc = client_app.test_client()
    for method, path in (("GET", "/api/v1/uploads"), ("POST", "/api/v1/uploads"),
                         ("GET", "/api/v1/uploads/dummy"), ("GET", "/api/v1/purposes")):
        for header in ("Bearer knk_bogus", "Bearer nope", "Basic aHI6eA=="):
            resp = tc.open(path, method=method, base_url=BASE,
                           headers={"Authorization": header})
            assert_refused(resp, path, f"{method} {path} {header}")


# -- sessions of one app do not open the other ---------------------------------------


def _client_login(app: Flask) -> FlaskClient:
    tc = app.test_client()
    resp = tc.post("/login", base_url=BASE,
                   data={"company": "acme", "login": "hr", "password": PASSWORD})
    assert resp.status_code == 302, resp.data[:300]
    assert tc.get("/", base_url=BASE).status_code == 200
    return tc


def _office_login(app: Flask, secret: str) -> FlaskClient:
    tc = app.test_client()
    resp = tc.post("/login", base_url=BASE, data={"login": "boss", "password": PASSWORD})
    assert resp.status_code == 302, resp.data[:300]
    assert urlsplit(resp.headers["Location"]).path == "/totp"
    resp = tc.post("/totp", base_url=BASE, data={"code": pyotp.TOTP(secret).now()})
    assert resp.status_code == 302, resp.data[:300]
    assert tc.get("/", base_url=BASE).status_code == 200
    return tc


@pytest.fixture(scope="module")
def logged_in(instance: Instance, client_app: Flask,
              office_app: Flask) -> tuple[Flask, Flask, str, str]:
    """One session cookie value of each app (logged in with CSRF briefly off).

    The client app cannot be built twice in one process (see
    test_client_app_factory_is_reentrant), so the shared apps are used and
    their CSRF setting restored afterwards.
    """
    for app in (client_app, office_app):
        app.config["WTF_CSRF_ENABLED"] = False
    try:
        ctc = _client_login(client_app)
        otc = _office_login(office_app, instance.totp_secret)
    finally:
        for app in (client_app, office_app):
            app.config["WTF_CSRF_ENABLED"] = True
    ccookie = ctc.get_cookie(CLIENT_COOKIE)
    ocookie = otc.get_cookie(OFFICE_COOKIE)
    assert ccookie is not None and ocookie is not None
    assert ctc.get_cookie(OFFICE_COOKIE) is None and otc.get_cookie(CLIENT_COOKIE) is None
    return client_app, office_app, ccookie.value, ocookie.value


def test_session_cookies_are_distinct(client_app: Flask, office_app: Flask,
                                      logged_in: tuple[Flask, Flask, str, str]) -> None:
    assert client_app.config["SESSION_COOKIE_NAME"] == CLIENT_COOKIE
    assert office_app.config["SESSION_COOKIE_NAME"] == OFFICE_COOKIE
    assert client_app.secret_key != office_app.secret_key
    for app in (client_app, office_app):
        assert app.config["SESSION_COOKIE_SECURE"] is True
        assert app.config["SESSION_COOKIE_HTTPONLY"] is True


@pytest.mark.parametrize("as_name", [CLIENT_COOKIE, OFFICE_COOKIE])
def test_client_session_does_not_open_office(as_name: str,
                                             logged_in: tuple[Flask, Flask, str, str]) -> None:
    capp, oapp, ccookie, _ = logged_in
    # Sanity: the cookie value really is a live client session.
    tc = capp.test_client()
    tc.set_cookie(CLIENT_COOKIE, ccookie, domain="localhost", secure=True)
    assert tc.get("/", base_url=BASE).status_code == 200
    # Presented to the office app, under its own name or renamed: refused.
    tc = oapp.test_client()
    tc.set_cookie(as_name, ccookie, domain="localhost", secure=True)
    for method, path in (("GET", "/"), ("GET", "/companies"), ("GET", "/uploads/dummy"),
                         ("POST", "/uploads/dummy/pull")):
        resp = tc.open(path, method=method, base_url=BASE)
        assert_refused(resp, path, f"client session ({as_name}) on office {method} {path}")


@pytest.mark.parametrize("as_name", [CLIENT_COOKIE, OFFICE_COOKIE])
def test_staff_session_does_not_open_client(as_name: str,
                                            logged_in: tuple[Flask, Flask, str, str]) -> None:
    capp, oapp, _, ocookie = logged_in
    tc = oapp.test_client()
    tc.set_cookie(OFFICE_COOKIE, ocookie, domain="localhost", secure=True)
    assert tc.get("/", base_url=BASE).status_code == 200
    tc = capp.test_client()
    tc.set_cookie(as_name, ocookie, domain="localhost", secure=True)
    for method, path in (("GET", "/"), ("GET", "/uploads/dummy"), ("POST", "/uploads"),
                         ("GET", "/api/v1/uploads"), ("POST", "/api/v1/uploads")):
        resp = tc.open(path, method=method, base_url=BASE)
        assert_refused(resp, path, f"staff session ({as_name}) on client {method} {path}")


def test_client_app_factory_is_reentrant(instance: Instance) -> None:
    first = portal.client.create_app(instance.settings)
    second = portal.client.create_app(instance.settings)
    assert second is not first
    # And each app has exactly one CSRF hook for cookie sessions on the API.
    for app in (first, second):
        hooks = app.before_request_funcs.get("api", [])
        assert [f.__name__ for f in hooks] == ["csrf_for_cookie_sessions"]


def test_office_app_factory_is_reentrant(office_app: Flask, instance: Instance) -> None:
    assert portal.office.create_app(instance.settings) is not office_app


# -- key separation by role ------------------------------------------------------------


def test_only_the_office_role_loads_the_vault_private_key(instance: Instance) -> None:
    assert build_services(instance.settings, "client").vault_private is None
    assert build_services(instance.settings, "worker").vault_private is None
    assert build_services(instance.settings, "office").vault_private is not None
