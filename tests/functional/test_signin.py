"""Sign-in rules over real HTTPS: each refused and audited."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pyotp
import pytest
import requests

from .harness import ROOT, Db, Stack, csrf_from, free_port


def db(stack: Stack) -> Db:
    return stack.db()


def audit_count(stack: Stack, action: str) -> int:
    with db(stack) as c:
        return int(c.execute("SELECT count(*) FROM audit_events WHERE action = ?",
                             (action,)).fetchone()[0])


def new_client(stack: Stack, company: str = "acme") -> tuple[str, str]:
    login, password = f"u{uuid.uuid4().hex[:8]}", f"Pw{uuid.uuid4().hex[:10]}9"
    stack.kinko("user", "add", company, login, "--password", password)
    return login, password


def browser(stack: Stack, base: str) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = stack.cert
    s.headers["Referer"] = base + "/"
    return s


def post_login(stack: Stack, s: requests.Session, **fields: str) -> requests.Response:
    page = s.get(stack.client_url + "/login")
    return s.post(stack.client_url + "/login", data={**fields, "csrf_token": csrf_from(page.text)},
                  allow_redirects=False)


def office_password_step(stack: Stack, s: requests.Session, login: str,
                         base: str | None = None) -> requests.Response:
    base = base or stack.office_url
    page = s.get(base + "/login")
    return s.post(base + "/login", data={"login": login, "password": "Passw0rd-" + login,
                                         "csrf_token": csrf_from(page.text)},
                  allow_redirects=False)


@pytest.fixture
def clean_address_counters(stack: Stack) -> Iterator[None]:
    yield
    with db(stack) as c:  # the suite signs in from 127.0.0.1 all the time
        c.execute("DELETE FROM address_failures")


@contextmanager
def second_office_process(stack: Stack, **env: str) -> Iterator[str]:
    """Another office app process on the same database (as a second machine would be)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:portal.gunicorn_conf",
         "--workers", "1", "--bind", f"127.0.0.1:{port}", "portal.office:create_app()"],
        env={**stack.env, **env}, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/login", verify=stack.cert, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def test_totp_step_cannot_be_skipped(stack: Stack) -> None:
    s = browser(stack, stack.office_url)
    r = office_password_step(stack, s, "boss")
    assert r.status_code == 302 and "/totp" in r.headers["Location"]
    for path in ("/", "/companies", "/password"):
        r = s.get(stack.office_url + path, allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), path


def test_a_totp_code_is_accepted_once_even_across_processes(stack: Stack) -> None:
    login = f"m{uuid.uuid4().hex[:6]}"
    secret = pyotp.random_base32()
    stack.kinko("staff", "add", login, "--role", "manager", "--password", "Passw0rd-" + login,
                "--totp-secret", secret)
    code = pyotp.TOTP(secret).now()
    first = browser(stack, stack.office_url)
    office_password_step(stack, first, login)
    page = first.get(stack.office_url + "/totp")
    r = first.post(stack.office_url + "/totp", data={"code": code,
                                                     "csrf_token": csrf_from(page.text)},
                   allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/"
    reused_before = audit_count(stack, "account:totp:reused")
    with second_office_process(stack) as other:
        s = browser(stack, other)
        office_password_step(stack, s, login, base=other)
        page = s.get(other + "/totp")
        r = s.post(other + "/totp", data={"code": code, "csrf_token": csrf_from(page.text)},
                   allow_redirects=False)
        assert r.status_code == 401
        assert s.get(other + "/", allow_redirects=False).status_code == 302
    assert audit_count(stack, "account:totp:reused") == reused_before + 1


def test_many_wrong_passwords_slow_down_lock_and_spare_other_accounts(
        stack: Stack, clean_address_counters: None) -> None:
    victim, victim_pw = new_client(stack)
    bystander, bystander_pw = new_client(stack)
    statuses = []
    for _ in range(12):
        s = browser(stack, stack.client_url)
        statuses.append(post_login(stack, s, company="acme", login=victim,
                                   password="wrong-Passw0rd").status_code)
        with db(stack) as c:  # let the slow-down pass instead of sleeping through it
            c.execute("UPDATE client_users SET throttled_until = NULL WHERE login = ?", (victim,))
    assert set(statuses) == {401}
    with db(stack) as c:
        locked, failures = c.execute("SELECT locked_at, failed_logins FROM client_users "
                                     "WHERE login = ?", (victim,)).fetchone()
    assert locked is not None and failures >= 10
    # Locked: even the right password gets the same refusal ...
    s = browser(stack, stack.client_url)
    assert post_login(stack, s, company="acme", login=victim,
                      password=victim_pw).status_code == 401
    # ... while an unrelated account keeps working.
    s = browser(stack, stack.client_url)
    assert post_login(stack, s, company="acme", login=bystander,
                      password=bystander_pw).status_code == 302
    assert audit_count(stack, "account:account:locked") >= 1
    assert audit_count(stack, "account:session:login_refused_locked") >= 1
    # Past 50 failures from one address, that address is refused for a while.
    codes = []
    for _ in range(95):
        s = browser(stack, stack.client_url)
        codes.append(post_login(stack, s, company="acme", login=f"nobody{_}",
                                password="x").status_code)
    assert codes[0] == 401 and codes[-1] == 429 and set(codes) <= {401, 429}
    assert 500 not in codes
    assert audit_count(stack, "account:session:address_throttled") >= 1


def test_unknown_login_and_wrong_password_get_the_same_answer(
        stack: Stack, clean_address_counters: None) -> None:
    login, _pw = new_client(stack)
    answers = []
    for who in (login, "no-such-user-" + uuid.uuid4().hex[:6]):
        s = browser(stack, stack.client_url)
        r = post_login(stack, s, company="acme", login=who, password="Wrong-passw0rd")
        answers.append((r.status_code, re.sub(r'value="[^"]+"', "", r.text)))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


def test_expired_password_forces_a_change(stack: Stack) -> None:
    login, pw = new_client(stack)
    with db(stack) as c:
        c.execute("UPDATE client_users SET password_changed_at = ? WHERE login = ?",
                  (c.ago(days=61), login))
    s = browser(stack, stack.client_url)
    r = post_login(stack, s, company="acme", login=login, password=pw)
    assert r.status_code == 302 and r.headers["Location"] == "/password"
    for path in ("/", "/api/v1/uploads"):
        r = s.get(stack.client_url + path, allow_redirects=False)
        assert r.status_code in (302, 403), path
        if r.status_code == 403:
            assert r.json()["error"] == "password_change_required"
        else:
            assert r.headers["Location"] == "/password"
    page = s.get(stack.client_url + "/password")
    new = f"Nw{uuid.uuid4().hex[:10]}7"
    r = s.post(stack.client_url + "/password", data={
        "current_password": pw, "new_password": pw, "new_password_confirm": pw,
        "csrf_token": csrf_from(page.text)}, allow_redirects=False)
    assert r.status_code == 400  # the old password is in the history
    r = s.post(stack.client_url + "/password", data={
        "current_password": pw, "new_password": new, "new_password_confirm": new,
        "csrf_token": csrf_from(page.text)}, allow_redirects=False)
    assert r.status_code == 302
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    assert audit_count(stack, "account:password:changed") >= 1


def test_common_and_short_passwords_are_refused(stack: Stack) -> None:
    login, pw = new_client(stack)
    s = browser(stack, stack.client_url)
    post_login(stack, s, company="acme", login=login, password=pw)
    for bad in ("password1", "abc12", "a" * 129 + "1", "onlyletters"):
        page = s.get(stack.client_url + "/password")
        r = s.post(stack.client_url + "/password", data={
            "current_password": pw, "new_password": bad, "new_password_confirm": bad,
            "csrf_token": csrf_from(page.text)}, allow_redirects=False)
        assert r.status_code == 400, bad


def test_an_old_cookie_is_dead_after_logout(stack: Stack) -> None:
    login, pw = new_client(stack)
    s = browser(stack, stack.client_url)
    post_login(stack, s, company="acme", login=login, password=pw)
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    stolen = s.cookies.get("__Host-kinko-client")
    page = s.get(stack.client_url + "/")
    s.post(stack.client_url + "/logout", data={"csrf_token": csrf_from(page.text)})
    replay = browser(stack, stack.client_url)
    replay.cookies.set("__Host-kinko-client", stolen, domain="localhost")
    r = replay.get(stack.client_url + "/", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")


def test_a_disabled_user_is_out_mid_session(stack: Stack) -> None:
    login, pw = new_client(stack)
    s = browser(stack, stack.client_url)
    post_login(stack, s, company="acme", login=login, password=pw)
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    with db(stack) as c:
        c.execute("UPDATE client_users SET active = FALSE WHERE login = ?", (login,))
    r = s.get(stack.client_url + "/", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")


def test_idle_and_absolute_limits_end_sessions_on_the_server(stack: Stack) -> None:
    for column, minutes in (("last_seen_at", 31), ("expires_at", 1)):
        login, pw = new_client(stack)
        s = browser(stack, stack.client_url)
        post_login(stack, s, company="acme", login=login, password=pw)
        assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200
        with db(stack) as c:
            uid = c.execute("SELECT id FROM client_users WHERE login = ?", (login,)).fetchone()[0]
            c.execute(f"UPDATE web_sessions SET {column} = ? "  # noqa: S608
                      "WHERE kind = 'client' AND account_id = ?", (c.ago(minutes=minutes), uid))
        r = s.get(stack.client_url + "/", allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), column


def test_new_session_after_each_step(stack: Stack) -> None:
    s = browser(stack, stack.office_url)
    s.get(stack.office_url + "/login")
    before = s.cookies.get("__Host-kinko-office")
    office_password_step(stack, s, "boss")
    after_password = s.cookies.get("__Host-kinko-office")
    page = s.get(stack.office_url + "/totp")
    s.post(stack.office_url + "/totp", data={"code": stack.totps["boss"].code(),
                                             "csrf_token": csrf_from(page.text)})
    after_totp = s.cookies.get("__Host-kinko-office")
    assert len({before, after_password, after_totp}) == 3
    assert s.get(stack.office_url + "/", allow_redirects=False).status_code == 200


def test_csrf_less_form_post_is_refused(stack: Stack) -> None:
    login, pw = new_client(stack)
    s = browser(stack, stack.client_url)
    post_login(stack, s, company="acme", login=login, password=pw)
    r = s.post(stack.client_url + "/logout", allow_redirects=False)
    assert r.status_code == 400
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200


def test_office_app_refuses_addresses_outside_the_allow_list(stack: Stack) -> None:
    before = audit_count(stack, "any:access:denied")
    with second_office_process(stack, KINKO_OFFICE_ALLOWED_NETWORKS="192.0.2.0/24") as other:
        for path in ("/login", "/", "/static/kinko.css"):
            r = requests.get(other + path, verify=stack.cert, allow_redirects=False, timeout=10)
            assert r.status_code == 403, path
            assert "Traceback" not in r.text
    assert audit_count(stack, "any:access:denied") >= before + 3


def test_handler_cannot_download_outside_assigned_companies(
        stack: Stack, beta_token: str) -> None:
    up = stack.api_upload(beta_token, f"a,b\n{uuid.uuid4()},1\n".encode(), "b.csv").json()
    stack.wait_for(beta_token, up["id"], {"clean"})
    stack.kinko("vault", "pull", up["id"], "--staff", "boss")
    hana = stack.office("hana")
    page = hana.get(stack.office_url + "/")
    r = hana.post(f"{stack.office_url}/uploads/{up['id']}/download", data={
        "csrf_token": csrf_from(page.text), "purpose": "koyo",
        "code": stack.totps["hana"].code()}, allow_redirects=False)
    assert r.status_code == 404
    r = stack.kinko("vault", "get", up["id"], "--staff", "hana", "--purpose", "koyo",
                    "-o", str(stack.base / "never"), check=False)
    assert r.returncode != 0 and not (stack.base / "never").exists()


def test_no_server_banner(stack: Stack) -> None:
    for url in (stack.client_url + "/login", stack.office_url + "/login"):
        r = requests.get(url, verify=stack.cert, timeout=10)
        assert r.headers.get("Server") == "kinko"
        assert "X-Powered-By" not in r.headers


def test_a_bearer_token_opens_the_api_only(stack: Stack, acme_token: str) -> None:
    h = {"Authorization": f"Bearer {acme_token}"}
    assert requests.get(stack.client_url + "/api/v1/uploads", headers=h, verify=stack.cert,
                        timeout=10).status_code == 200
    for path in ("/", "/account", "/password"):
        r = requests.get(stack.client_url + path, headers=h, verify=stack.cert,
                         allow_redirects=False, timeout=10)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), path


def test_replacing_the_second_factor_needs_the_password(stack: Stack) -> None:
    login, pw = new_client(stack)
    s = browser(stack, stack.client_url)
    post_login(stack, s, company="acme", login=login, password=pw)
    page = s.get(stack.client_url + "/totp/enrol")
    secret = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text).group(1)
    code = pyotp.TOTP(secret.replace(" ", "")).now()
    r = s.post(stack.client_url + "/totp/enrol", data={
        "code": code, "current_password": "not-" + pw, "csrf_token": csrf_from(page.text)})
    assert r.status_code == 400
    with db(stack) as c:
        assert c.execute("SELECT totp_secret FROM client_users WHERE login = ?",
                         (login,)).fetchone()[0] is None
    r = s.post(stack.client_url + "/totp/enrol", data={
        "code": code, "current_password": pw, "csrf_token": csrf_from(page.text)})
    assert r.status_code == 200 and "code" in r.text
