"""The manager's account administration over real HTTPS (the session stack).

Companies, client users and staff are created and changed through the office
console; the effects are checked where they matter (the client app's sign-in,
live sessions, the password change page) and in ``audit_events``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import pyotp
import pytest
import requests

from .harness import Db, Stack, csrf_from

PASSWORD_RE = re.compile(r'id="initial-password">([^<]+)<')


def uid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def db(stack: Stack) -> Db:
    return stack.db()


def one(stack: Stack, sql: str, *args: Any) -> Any:
    with db(stack) as c:
        return c.execute(sql, args).fetchone()


def audit(stack: Stack, action: str, after: int = 0) -> list[dict[str, Any]]:
    with db(stack) as c:
        rows = c.execute("SELECT actor_label, company_id, details FROM audit_events "
                         "WHERE action = ? AND id > ? ORDER BY id", (action, after)).fetchall()
    return [{"actor": r[0], "company_id": r[1], "details": json.loads(r[2])} for r in rows]


def last_event_id(stack: Stack) -> int:
    return int(one(stack, "SELECT coalesce(max(id), 0) FROM audit_events")[0])


def browser(stack: Stack, base: str) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = stack.cert
    s.headers["Referer"] = base + "/"
    return s


def post_form(stack: Stack, s: requests.Session, path: str, data: dict[str, Any],
              page: str = "/") -> requests.Response:
    """POST as the browser does: the CSRF token from a page of the same session."""
    csrf = csrf_from(s.get(stack.office_url + page).text)
    return s.post(stack.office_url + path, data={**data, "csrf_token": csrf},
                  allow_redirects=False)


def client_password_step(stack: Stack, company: str, login: str,
                         password: str) -> tuple[requests.Session, requests.Response]:
    s = browser(stack, stack.client_url)
    page = s.get(stack.client_url + "/login")
    r = s.post(stack.client_url + "/login", data={
        "company": company, "login": login, "password": password,
        "csrf_token": csrf_from(page.text)}, allow_redirects=False)
    return s, r


def location(r: requests.Response) -> str:
    return urlsplit(r.headers.get("Location", "")).path


def initial_password(r: requests.Response) -> str:
    assert r.status_code == 200, (r.status_code, r.text[:500])
    # The page with a password must never be cached (the base app: every page).
    assert r.headers["Cache-Control"] == "no-store"
    m = PASSWORD_RE.search(r.text)
    assert m, r.text[:2000]
    return m.group(1)


def create_company(stack: Stack, boss: requests.Session, **extra: str) -> str:
    code = uid("c")
    r = post_form(stack, boss, "/admin/companies",
                  {"code": code, "name": "管理テスト株式会社", "auto_pull": "0",
                   "require_2fa": "0", **extra}, page="/admin/companies")
    assert r.status_code == 303 and location(r) == f"/admin/companies/{code}", r.text[:500]
    return code


def create_user(stack: Stack, boss: requests.Session, code: str) -> tuple[str, str, int]:
    login = uid("u")
    r = post_form(stack, boss, f"/admin/companies/{code}/users",
                  {"login": login, "display_name": "人事 太郎", "email": f"{login}@example.jp"},
                  page=f"/admin/companies/{code}")
    password = initial_password(r)
    user_id = one(stack, "SELECT u.id FROM client_users u JOIN companies c ON c.id = "
                         "u.company_id WHERE c.code = ? AND u.login = ?", code, login)[0]
    return login, password, int(user_id)


def cli_user(stack: Stack, code: str = "acme", **kw: str) -> tuple[str, str, int]:
    login, password = uid("u"), f"Pw{uuid.uuid4().hex[:10]}9"
    args = ["user", "add", code, login, "--password", password]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", v]
    stack.kinko(*args)
    user_id = one(stack, "SELECT u.id FROM client_users u JOIN companies c ON c.id = "
                         "u.company_id WHERE c.code = ? AND u.login = ?", code, login)[0]
    return login, password, int(user_id)


def change_password(stack: Stack, s: requests.Session, current: str,
                    new: str) -> requests.Response:
    page = s.get(stack.client_url + "/password")
    assert page.status_code == 200
    return s.post(stack.client_url + "/password", data={
        "current_password": current, "new_password": new, "new_password_confirm": new,
        "csrf_token": csrf_from(page.text)}, allow_redirects=False)


@pytest.fixture(scope="module")
def boss(stack: Stack) -> requests.Session:
    return stack.office("boss")


# -- the whole path of a new client user -----------------------------------------------


def test_manager_creates_company_and_user_who_must_change_the_password(
        stack: Stack, boss: requests.Session) -> None:
    start = last_event_id(stack)
    code = create_company(stack, boss)
    assert code in boss.get(stack.office_url + "/admin/companies").text
    login, password, user_id = create_user(stack, boss, code)
    # Shown once: not on the company page, not in the database, not in the log.
    page = boss.get(stack.office_url + f"/admin/companies/{code}").text
    assert login in page and password not in page
    assert password not in str(one(stack, "SELECT * FROM client_users WHERE id = ?", user_id))
    with db(stack) as c:
        assert not any(password in str(row) for row in c.execute(
            "SELECT details, actor_label FROM audit_events"))

    s = stack.client(code, login, password)
    for path in ("/", "/uploads/whatever"):
        r = s.get(stack.client_url + path, allow_redirects=False)
        assert r.status_code == 302 and location(r) == "/password", path
    new = f"Nw{uuid.uuid4().hex[:12]}7"
    r = change_password(stack, s, password, new)
    assert r.status_code == 302, r.text[:500]
    room = s.get(stack.client_url + "/", allow_redirects=False)
    assert room.status_code == 200
    # The new password works, the initial one no longer does.
    assert client_password_step(stack, code, login, new)[1].status_code == 302
    assert client_password_step(stack, code, login, password)[1].status_code == 401

    company_id = one(stack, "SELECT id FROM companies WHERE code = ?", code)[0]
    created = audit(stack, "office:company:created", start)
    assert [e for e in created if e["company_id"] == company_id and e["actor"] == "boss"]
    users = audit(stack, "office:client_user:created", start)
    assert [e for e in users if e["details"]["user_id"] == user_id
            and e["details"]["initial_password"] is True]
    assert audit(stack, "account:password:changed", start)


def test_manager_edits_a_company(stack: Stack, boss: requests.Session) -> None:
    start = last_event_id(stack)
    code = create_company(stack, boss)
    r = post_form(stack, boss, f"/admin/companies/{code}",
                  {"name": "改名株式会社", "auto_pull": "1", "require_2fa": "1"},
                  page=f"/admin/companies/{code}")
    assert r.status_code == 303
    assert one(stack, "SELECT name, auto_pull, require_2fa FROM companies WHERE code = ?",
               code) == ("改名株式会社", 1, 1)
    ev = audit(stack, "office:company:updated", start)
    assert ev and ev[-1]["details"]["changes"] == {
        "name": True, "auto_pull": [False, True], "require_2fa": [False, True]}
    # A bad code is refused with a message and nothing is created.
    r = post_form(stack, boss, "/admin/companies", {"code": "bad code", "name": "x"},
                  page="/admin/companies")
    assert r.status_code == 400 and 'class="flash error"' in r.text


# -- only managers ---------------------------------------------------------------------


def test_a_handler_gets_403_on_every_admin_page(stack: Stack, boss: requests.Session) -> None:
    hana = stack.office("hana")
    home = hana.get(stack.office_url + "/")
    assert home.status_code == 200 and "/admin/" not in home.text  # no link either
    assert "/admin/companies" in boss.get(stack.office_url + "/").text
    boss_id = one(stack, "SELECT id FROM staff WHERE login = 'boss'")[0]
    acme_hr = one(stack, "SELECT u.id FROM client_users u JOIN companies c ON "
                         "c.id = u.company_id WHERE c.code = 'acme' AND u.login = 'hr'")[0]
    start = last_event_id(stack)
    gets = ["/admin/companies", "/admin/companies/acme", "/admin/staff", "/admin/policy"]
    posts = ["/admin/companies", "/admin/companies/acme", "/admin/companies/acme/users",
             "/admin/staff", "/admin/policy"]
    posts += [f"/admin/companies/acme/users/{acme_hr}/{a}" for a in
              ("reset-password", "reset-2fa", "disable", "enable", "unlock")]
    posts += [f"/admin/staff/{boss_id}/{a}" for a in
              ("reset-password", "reset-2fa", "disable", "enable", "unlock", "companies")]
    for path in gets:
        r = hana.get(stack.office_url + path, allow_redirects=False)
        assert r.status_code == 403, (path, r.status_code)
        assert "Traceback" not in r.text
    csrf = csrf_from(home.text)
    for path in posts:
        r = hana.post(stack.office_url + path, allow_redirects=False,
                      data={"csrf_token": csrf, "code": uid("h"), "name": "x", "login": uid("h"),
                            "role": "manager", "min_length": "8", "max_length": "9",
                            "expiry_days": "0", "history": "0"})
        assert r.status_code == 403, (path, r.status_code)
    assert one(stack, "SELECT active, totp_secret IS NOT NULL FROM staff WHERE login = 'boss'") \
        == (1, 1)
    assert one(stack, "SELECT active FROM client_users WHERE id = ?", acme_hr) == (1,)
    denied = [e for e in audit(stack, "any:access:denied", start)
              if e["details"].get("why") == "not_manager" and e["actor"] == "hana"]
    assert len(denied) == len(gets) + len(posts)
    assert not audit(stack, "account:account:disabled", start)
    assert not audit(stack, "account:password:reset", start)


# -- disable, reset, unlock --------------------------------------------------------------


def test_disabling_a_user_ends_their_live_session(stack: Stack, boss: requests.Session) -> None:
    start = last_event_id(stack)
    login, password, user_id = cli_user(stack)
    s = stack.client("acme", login, password)
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    r = post_form(stack, boss, f"/admin/companies/acme/users/{user_id}/disable", {},
                  page="/admin/companies/acme")
    assert r.status_code == 303
    r = s.get(stack.client_url + "/", allow_redirects=False)
    assert r.status_code == 302 and location(r) == "/login"
    assert client_password_step(stack, "acme", login, password)[1].status_code == 401
    assert one(stack, "SELECT count(*) FROM web_sessions WHERE kind = 'client' AND "
                      "account_id = ? AND revoked_at IS NULL", user_id) == (0,)
    r = post_form(stack, boss, f"/admin/companies/acme/users/{user_id}/enable", {},
                  page="/admin/companies/acme")
    assert r.status_code == 303
    assert client_password_step(stack, "acme", login, password)[1].status_code == 302
    dis = audit(stack, "account:account:disabled", start)
    assert [e for e in dis if e["details"]["target_id"] == user_id
            and e["details"]["sessions_ended"] >= 1 and e["actor"] == "boss"]
    assert [e for e in audit(stack, "account:account:enabled", start)
            if e["details"]["target_id"] == user_id]


def test_reset_password_is_shown_once_and_forces_a_change(stack: Stack,
                                                          boss: requests.Session) -> None:
    start = last_event_id(stack)
    login, old, user_id = cli_user(stack)
    s = stack.client("acme", login, old)
    r = post_form(stack, boss, f"/admin/companies/acme/users/{user_id}/reset-password", {},
                  page="/admin/companies/acme")
    new = initial_password(r)
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 302
    assert client_password_step(stack, "acme", login, old)[1].status_code == 401
    s2, r = client_password_step(stack, "acme", login, new)
    assert r.status_code == 302 and location(r) == "/password"
    ev = [e for e in audit(stack, "account:password:reset", start)
          if e["details"]["target_id"] == user_id]
    assert ev and new not in json.dumps(ev)


def test_reset_2fa_and_unlock(stack: Stack, boss: requests.Session) -> None:
    start = last_event_id(stack)
    login, password, user_id = cli_user(stack, totp_secret=pyotp.random_base32())
    _s, r = client_password_step(stack, "acme", login, password)
    assert r.status_code == 302 and location(r) == "/totp"
    page = boss.get(stack.office_url + "/admin/companies/acme").text
    assert f"/admin/companies/acme/users/{user_id}/reset-2fa" in page
    r = post_form(stack, boss, f"/admin/companies/acme/users/{user_id}/reset-2fa", {},
                  page="/admin/companies/acme")
    assert r.status_code == 303
    assert one(stack, "SELECT totp_secret, totp_last_step FROM client_users WHERE id = ?",
               user_id) == (None, None)
    _s, r = client_password_step(stack, "acme", login, password)
    assert r.status_code == 302 and location(r) == "/"  # acme does not require 2FA

    with db(stack) as c:  # as ten failed sign-ins would leave it
        c.execute("UPDATE client_users SET locked_at = CURRENT_TIMESTAMP, failed_logins = 10 "
                  "WHERE id = ?", (user_id,))
    assert client_password_step(stack, "acme", login, password)[1].status_code == 401
    page = boss.get(stack.office_url + "/admin/companies/acme").text
    row = page[page.index(f'id="user-{user_id}"'):]
    row = row[:row.index("</tr>")]
    assert "s-refused" in row and ">10<" in row  # locked, 10 failures shown
    r = post_form(stack, boss, f"/admin/companies/acme/users/{user_id}/unlock", {},
                  page="/admin/companies/acme")
    assert r.status_code == 303
    assert one(stack, "SELECT locked_at, failed_logins FROM client_users WHERE id = ?",
               user_id) == (None, 0)
    assert client_password_step(stack, "acme", login, password)[1].status_code == 302
    assert [e for e in audit(stack, "account:totp:reset", start)
            if e["details"]["target_id"] == user_id and e["details"]["had_totp"]]
    assert [e for e in audit(stack, "account:account:unlocked", start)
            if e["details"]["target_id"] == user_id and e["details"]["locked"]]


# -- staff -----------------------------------------------------------------------------


def test_manager_creates_and_manages_staff(stack: Stack, boss: requests.Session) -> None:
    start = last_event_id(stack)
    code = create_company(stack, boss)
    acme, other = (one(stack, "SELECT id FROM companies WHERE code = ?", c)[0]
                   for c in ("acme", code))
    login = uid("s")
    r = post_form(stack, boss, "/admin/staff",
                  {"login": login, "role": "handler", "display_name": "担当 次郎",
                   "email": f"{login}@example.jp", "companies": [str(acme)]},
                  page="/admin/staff")
    password = initial_password(r)
    staff_id = one(stack, "SELECT id FROM staff WHERE login = ?", login)[0]
    assert one(stack, "SELECT role, totp_secret, must_change_password FROM staff WHERE id = ?",
               staff_id) == ("handler", None, 1)
    # The first sign-in goes to TOTP enrolment: nobody else saw a secret.
    s = browser(stack, stack.office_url)
    page = s.get(stack.office_url + "/login")
    r = s.post(stack.office_url + "/login", data={"login": login, "password": password,
                                                 "csrf_token": csrf_from(page.text)},
               allow_redirects=False)
    assert r.status_code == 302 and location(r) == "/totp/enrol"

    r = post_form(stack, boss, f"/admin/staff/{staff_id}/companies",
                  {"companies": [str(acme), str(other)]}, page="/admin/staff")
    assert r.status_code == 303
    with db(stack) as c:
        assigned = {row[0] for row in c.execute(
            "SELECT company_id FROM staff_companies WHERE staff_id = ?", (staff_id,))}
    assert assigned == {acme, other}
    for action in ("reset-password", "reset-2fa", "unlock", "disable", "enable"):
        r = post_form(stack, boss, f"/admin/staff/{staff_id}/{action}", {}, page="/admin/staff")
        assert r.status_code in (200, 303), (action, r.status_code)
        if action == "reset-password":
            assert initial_password(r) != password

    # A manager cannot disable themselves.
    boss_id = one(stack, "SELECT id FROM staff WHERE login = 'boss'")[0]
    r = post_form(stack, boss, f"/admin/staff/{boss_id}/disable", {}, page="/admin/staff")
    assert r.status_code == 303
    assert one(stack, "SELECT active FROM staff WHERE id = ?", boss_id) == (1,)
    assert boss.get(stack.office_url + "/admin/staff").status_code == 200

    def about(action: str) -> list[dict[str, Any]]:
        return [e for e in audit(stack, action, start)
                if e["details"].get("staff_id", e["details"].get("target_id")) == staff_id]
    assert about("office:staff:created")[0]["details"]["companies"] == ["acme"]
    assert about("office:staff:updated")[0]["details"]["companies"]["after"] == sorted(
        ["acme", code])
    for action in ("account:password:reset", "account:totp:reset", "account:account:unlocked",
                   "account:account:disabled", "account:account:enabled"):
        assert about(action), action
    assert not [e for e in audit(stack, "account:account:disabled", start)
                if e["details"]["target_id"] == boss_id]


# -- the password policy -----------------------------------------------------------------


DEFAULT_POLICY = {"min_length": "8", "max_length": "128", "letters_and_digits": "1",
                  "expiry_days": "60", "history": "5", "refuse_common": "1"}


def test_policy_minimum_length_applies_to_password_changes(stack: Stack,
                                                           boss: requests.Session) -> None:
    start = last_event_id(stack)
    login, password, _user_id = cli_user(stack)
    page = boss.get(stack.office_url + "/admin/policy")
    assert page.status_code == 200 and 'name="min_length"' in page.text
    try:
        r = post_form(stack, boss, "/admin/policy", {**DEFAULT_POLICY, "min_length": "16"},
                      page="/admin/policy")
        assert r.status_code == 303
        assert 'value="16"' in boss.get(stack.office_url + "/admin/policy").text
        s = stack.client("acme", login, password)
        short = f"Sh{uuid.uuid4().hex[:9]}4"  # 12 characters: fine before, too short now
        r = change_password(stack, s, password, short)
        assert r.status_code == 400
        assert "16 文字以上" in r.text or "at least 16 characters" in r.text
        assert client_password_step(stack, "acme", login, short)[1].status_code == 401
        longer = f"Lo{uuid.uuid4().hex[:16]}4"
        assert change_password(stack, s, password, longer).status_code == 302
        # Out-of-range values are refused and change nothing.
        r = post_form(stack, boss, "/admin/policy", {**DEFAULT_POLICY, "min_length": "4"},
                      page="/admin/policy")
        assert r.status_code == 400 and 'class="flash error"' in r.text
    finally:
        r = post_form(stack, boss, "/admin/policy", DEFAULT_POLICY, page="/admin/policy")
        assert r.status_code == 303
    changes = audit(stack, "office:policy:changed", start)
    assert len(changes) == 2
    assert changes[0]["details"]["old"]["min_length"] == 8
    assert changes[0]["details"]["new"]["min_length"] == 16
    assert changes[1]["details"]["new"]["min_length"] == 8
    assert audit(stack, "account:password:change_refused", start)


def test_audit_chain_still_verifies(stack: Stack) -> None:
    assert "intact" in stack.kinko("audit", "verify").stdout
