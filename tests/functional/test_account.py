"""The client user's account pages over real HTTPS: API tokens, sessions,
two-step verification and recovery codes.

Each test makes its own client user, so tests do not share TOTP steps,
sessions or lockout counters.
"""

from __future__ import annotations

import email
import re
import uuid
from email import policy
from urllib.parse import urlsplit

import pytest
import requests

from .harness import Stack, Totp, csrf_from

KEY = re.compile(r'<code class="secret">([A-Z2-7 ]+)</code>')
RECOVERY = re.compile(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>")
API_TOKEN = re.compile(r'<code class="secret" id="new-token">(knk_[A-Za-z0-9_-]+)</code>')
REVOKE = re.compile(r'action="/account/tokens/(\d+)/revoke"')


# -- helpers -------------------------------------------------------------------

def new_user(stack: Stack, company: str = "acme", mail: bool = False) -> tuple[str, str]:
    login = "u" + uuid.uuid4().hex[:10]
    password = "Kt7-" + uuid.uuid4().hex[:12] + "x"
    args = ["user", "add", company, login, "--password", password]
    if mail:
        args += ["--email", f"{login}@example.jp"]
    stack.kinko(*args)
    return login, password


def browser(stack: Stack) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # env CA bundles would override verify
    s.verify = stack.cert
    s.headers["Referer"] = stack.client_url + "/"
    return s


def path_of(resp: requests.Response) -> str:
    return urlsplit(resp.headers.get("Location", "")).path


def password_step(stack: Stack, login: str, password: str,
                  company: str = "acme") -> tuple[requests.Session, requests.Response]:
    s = browser(stack)
    page = s.get(stack.client_url + "/login")
    r = s.post(stack.client_url + "/login", data={
        "company": company, "login": login, "password": password,
        "csrf_token": csrf_from(page.text)}, allow_redirects=False)
    return s, r


def sign_in(stack: Stack, login: str, password: str, company: str = "acme") -> requests.Session:
    """Password only: the account has no second factor."""
    s, r = password_step(stack, login, password, company)
    assert r.status_code == 302 and path_of(r) == "/", (r.status_code, r.headers)
    return s


def totp_step(stack: Stack, s: requests.Session, code: str) -> requests.Response:
    page = s.get(stack.client_url + "/totp")
    assert page.status_code == 200, page.status_code
    return s.post(stack.client_url + "/totp", data={
        "code": code, "csrf_token": csrf_from(page.text)}, allow_redirects=False)


def sign_in_2fa(stack: Stack, login: str, password: str, code: str,
                company: str = "acme") -> tuple[requests.Session, requests.Response]:
    s, r = password_step(stack, login, password, company)
    assert r.status_code == 302 and path_of(r) == "/totp", (r.status_code, r.headers)
    return s, totp_step(stack, s, code)


def account(stack: Stack, s: requests.Session) -> str:
    r = s.get(stack.client_url + "/account", allow_redirects=False)
    assert r.status_code == 200, (r.status_code, r.headers)
    return r.text


def post(stack: Stack, s: requests.Session, action: str, **data: str) -> requests.Response:
    """Submit a form of the account page, with the page's CSRF token."""
    token = csrf_from(account(stack, s))
    return s.post(stack.client_url + action, data={"csrf_token": token, **data},
                  allow_redirects=False)


def enrol(stack: Stack, s: requests.Session, password: str) -> tuple[Totp, list[str]]:
    """Set up TOTP on the enrol page, as a person with an authenticator app
    (signed in, replacing the factor needs the password as well)."""
    page = s.get(stack.client_url + "/totp/enrol")
    assert page.status_code == 200, page.status_code
    m = KEY.search(page.text)
    assert m, "no key on the enrol page"
    assert " " in m.group(1)  # shown in groups of four
    totp = Totp(m.group(1).replace(" ", ""))
    r = s.post(stack.client_url + "/totp/enrol", data={
        "code": totp.code(), "current_password": password,
        "csrf_token": csrf_from(page.text)}, allow_redirects=False)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    codes = RECOVERY.findall(r.text)
    assert len(codes) == 10, r.text[:500]
    return totp, codes


def logout(stack: Stack, s: requests.Session) -> None:
    page = s.get(stack.client_url + "/")
    r = s.post(stack.client_url + "/logout", data={"csrf_token": csrf_from(page.text)},
               allow_redirects=False)
    assert r.status_code == 302 and path_of(r) == "/login"


def audit(stack: Stack, login: str) -> list[tuple[str, str, int | None, str | None, str]]:
    """(action, actor_kind, company_id, remote_addr, details) of the user's events."""
    with stack.db() as db:
        return list(db.execute(
            "SELECT action, actor_kind, company_id, remote_addr, details FROM audit_events "
            "WHERE actor_label = ? ORDER BY id", (login,)))


def actions(stack: Stack, login: str) -> list[str]:
    return [row[0] for row in audit(stack, login)]


def company_id(stack: Stack, code: str) -> int:
    with stack.db() as db:
        return int(db.execute("SELECT id FROM companies WHERE code = ?", (code,)).fetchone()[0])


def mails_to(stack: Stack, login: str) -> list[str]:
    out = []
    for path in sorted((stack.home / "outbox").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if msg["To"] == f"{login}@example.jp":
            body = msg.get_body()
            assert body is not None
            out.append(str(msg["Subject"]) + "\n" + body.get_content())
    return out


def api_get(stack: Stack, token: str) -> requests.Response:
    return requests.get(stack.client_url + "/api/v1/uploads",
                        headers={"Authorization": f"Bearer {token}"}, verify=stack.cert,
                        timeout=30)


def create_token(stack: Stack, s: requests.Session, label: str) -> str:
    r = post(stack, s, "/account/tokens", label=label)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    m = API_TOKEN.search(r.text)
    assert m, r.text[:500]
    return m.group(1)


# -- the overview --------------------------------------------------------------

def test_account_page_shows_the_account_and_is_in_the_nav(stack: Stack) -> None:
    login, pw = new_user(stack)
    s = sign_in(stack, login, pw)
    assert 'href="/account"' in s.get(stack.client_url + "/").text
    page = account(stack, s)
    assert login in page
    assert "株式会社アクメ" in page
    assert 'href="/password"' in page
    assert 'href="/totp/enrol"' in page
    assert 'action="/account/tokens"' in page
    # Not enrolled: nothing to regenerate or turn off.
    assert "/account/recovery-codes" not in page and "/account/totp/disable" not in page
    # Only this browser is signed in: nothing else to end.
    assert "/account/sessions/end-others" not in page


def test_account_pages_need_a_signed_in_browser(stack: Stack) -> None:
    anonymous = browser(stack)
    r = anonymous.get(stack.client_url + "/account", allow_redirects=False)
    assert r.status_code == 302 and path_of(r) == "/login"
    r = anonymous.post(stack.client_url + "/account/tokens", data={"label": "x"},
                       allow_redirects=False)
    assert r.status_code == 302 and path_of(r) == "/login"
    # An API token is not a browser session: it opens no page at all
    # (a leaked token must not be able to mint more tokens).
    login, pw = new_user(stack)
    token = create_token(stack, sign_in(stack, login, pw), "ci")
    r = requests.get(stack.client_url + "/account", verify=stack.cert, allow_redirects=False,
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 302 and path_of(r) == "/login", r.status_code


def test_account_changes_need_the_csrf_token(stack: Stack) -> None:
    login, pw = new_user(stack)
    first, second = sign_in(stack, login, pw), sign_in(stack, login, pw)
    for action, data in (("/account/tokens", {"label": "x"}),
                         ("/account/sessions/end-others", {})):
        r = first.post(stack.client_url + action, data=data, allow_redirects=False)
        assert r.status_code == 400, (action, r.status_code)
    assert second.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    assert "knk_" not in account(stack, first)
    assert not {"office:token:created", "account:session:ended_others"} & set(
        actions(stack, login))


# -- API tokens ------------------------------------------------------------------

def test_token_created_in_the_ui_works_until_revoked(stack: Stack) -> None:
    login, pw = new_user(stack, mail=True)
    s = sign_in(stack, login, pw)
    token = create_token(stack, s, "経理PC の取り込みツール")
    assert api_get(stack, token).status_code == 200

    page = account(stack, s)
    assert "経理PC の取り込みツール" in page
    assert token not in page and token[4:20] not in page  # shown once, never again
    ids = REVOKE.findall(page)
    assert len(ids) == 1

    r = post(stack, s, f"/account/tokens/{ids[0]}/revoke")
    assert r.status_code == 303 and path_of(r) == "/account"
    r = api_get(stack, token)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert not REVOKE.findall(account(stack, s))  # listed as revoked, no button

    events = [e for e in audit(stack, login) if "token" in e[0]]
    assert [e[0] for e in events] == ["office:token:created", "account:token:revoked"]
    acme = company_id(stack, "acme")
    for action, kind, company, addr, details in events:
        assert (kind, company) == ("client", acme) and addr, action
        assert token not in details and "経理" not in details
    notices = mails_to(stack, login)
    assert notices and all(token not in n for n in notices)


def test_token_label_is_required(stack: Stack) -> None:
    login, pw = new_user(stack)
    s = sign_in(stack, login, pw)
    for label in ("", "   ", "x" * 101):
        r = post(stack, s, "/account/tokens", label=label)
        assert r.status_code == 400, (label, r.status_code)
        assert "knk_" not in r.text
    assert "office:token:created" not in actions(stack, login)


def test_another_users_token_cannot_be_revoked(stack: Stack) -> None:
    owner, owner_pw = new_user(stack)
    other, other_pw = new_user(stack)  # same company, another person
    token = create_token(stack, sign_in(stack, owner, owner_pw), "owner")
    token_id = REVOKE.findall(account(stack, sign_in(stack, owner, owner_pw)))[0]

    s = sign_in(stack, other, other_pw)
    for tid in (token_id, "999999", "99999999999999999999999"):
        r = post(stack, s, f"/account/tokens/{tid}/revoke")
        assert r.status_code == 404, (tid, r.status_code)
    assert api_get(stack, token).status_code == 200
    assert "account:token:revoked" not in actions(stack, other)


# -- sessions --------------------------------------------------------------------

def test_end_other_sessions(stack: Stack) -> None:
    login, pw = new_user(stack)
    first = sign_in(stack, login, pw)
    second = sign_in(stack, login, pw)
    page = account(stack, first)
    assert page.count("<tr") - 1 == 2  # header row + two sessions
    assert page.count('class="current"') == 1
    token = create_token(stack, second, "kept")

    r = post(stack, first, "/account/sessions/end-others")
    assert r.status_code == 303 and path_of(r) == "/account"

    r = second.get(stack.client_url + "/", allow_redirects=False)
    assert r.status_code == 302 and path_of(r) == "/login"
    assert first.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    page = account(stack, first)
    assert "/account/sessions/end-others" not in page  # only this browser now
    assert api_get(stack, token).status_code == 200  # tokens are separate

    ended = [e for e in audit(stack, login) if e[0] == "account:session:ended_others"]
    assert len(ended) == 1 and '"ended": 1' in ended[0][4]


# -- two-step verification ---------------------------------------------------------

def test_enrol_then_sign_in_needs_the_second_factor(stack: Stack) -> None:
    login, pw = new_user(stack, mail=True)
    s = sign_in(stack, login, pw)
    totp, codes = enrol(stack, s, pw)
    page = account(stack, s)
    assert "/account/recovery-codes" in page and "/account/totp/disable" in page
    assert re.search(r"<dd>10</dd>", page)
    logout(stack, s)

    # The TOTP step is now required: the password alone does not sign in.
    s, r = password_step(stack, login, pw)
    assert r.status_code == 302 and path_of(r) == "/totp"
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 302
    r = totp_step(stack, s, totp.code())
    assert r.status_code == 302 and path_of(r) == "/"
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 200
    logout(stack, s)

    # A recovery code works once.
    s, r = sign_in_2fa(stack, login, pw, codes[0])
    assert r.status_code == 302 and path_of(r) == "/"
    assert re.search(r"<dd>9</dd>", account(stack, s))
    logout(stack, s)
    s, r = sign_in_2fa(stack, login, pw, codes[0])
    assert r.status_code == 401

    # Regenerating needs a current TOTP code; a wrong one changes nothing.
    s, r = sign_in_2fa(stack, login, pw, codes[1])
    assert r.status_code == 302
    r = post(stack, s, "/account/recovery-codes", code="000000")
    assert r.status_code == 400 and not RECOVERY.findall(r.text)
    r = post(stack, s, "/account/recovery-codes", code=codes[2])  # not a TOTP code
    assert r.status_code == 400 and not RECOVERY.findall(r.text)
    r = post(stack, s, "/account/recovery-codes", code=totp.code())
    assert r.status_code == 200
    new_codes = RECOVERY.findall(r.text)
    assert len(new_codes) == 10 and not set(new_codes) & set(codes)
    logout(stack, s)

    # The old codes no longer work; the new ones do.
    s, r = sign_in_2fa(stack, login, pw, codes[3])
    assert r.status_code == 401
    s, r = sign_in_2fa(stack, login, pw, new_codes[0])
    assert r.status_code == 302 and path_of(r) == "/"

    done = actions(stack, login)
    assert "account:totp:enrolled" in done
    assert "account:recovery_code:regenerated" in done
    assert done.count("account:recovery_code:used") == 3
    assert done.count("account:totp:failed") >= 3
    notices = mails_to(stack, login)
    assert len(notices) >= 2  # set up, new recovery codes
    for n in notices:
        assert totp.secret not in n and not any(c in n for c in codes + new_codes)


def test_replayed_totp_code_is_refused_and_audited(stack: Stack) -> None:
    login, pw = new_user(stack)
    totp, _codes = enrol(stack, sign_in(stack, login, pw), pw)
    code = totp.code()
    s, r = sign_in_2fa(stack, login, pw, code)
    assert r.status_code == 302 and path_of(r) == "/"
    logout(stack, s)

    s, r = sign_in_2fa(stack, login, pw, code)  # the same code again
    assert r.status_code == 401
    assert s.get(stack.client_url + "/", allow_redirects=False).status_code == 302
    reused = [e for e in audit(stack, login) if e[0] == "account:totp:reused"]
    assert len(reused) == 1
    assert reused[0][1:3] == ("client", company_id(stack, "acme")) and reused[0][3]

    # A replay on the account page is refused as well.
    s, r = sign_in_2fa(stack, login, pw, totp.code())
    assert r.status_code == 302
    fresh = totp.code()
    assert post(stack, s, "/account/recovery-codes", code=fresh).status_code == 200
    assert post(stack, s, "/account/recovery-codes", code=fresh).status_code == 400
    assert actions(stack, login).count("account:totp:reused") == 2


def test_turn_off_two_step_verification(stack: Stack) -> None:
    login, pw = new_user(stack, mail=True)
    s = sign_in(stack, login, pw)
    totp, codes = enrol(stack, s, pw)

    r = post(stack, s, "/account/totp/disable", password="wrong-Passw0rd", code=totp.code())
    assert r.status_code == 400
    r = post(stack, s, "/account/totp/disable", password=pw, code="123456")
    assert r.status_code == 400
    assert "/account/totp/disable" in account(stack, s)  # still on

    r = post(stack, s, "/account/totp/disable", password=pw, code=totp.code())
    assert r.status_code == 303 and path_of(r) == "/account"
    page = account(stack, s)
    assert "/account/totp/disable" not in page and "/account/recovery-codes" not in page
    logout(stack, s)

    # Password only again, and the recovery codes are gone.
    logout(stack, sign_in(stack, login, pw))

    done = actions(stack, login)
    assert "account:totp:disable_refused" in done and "account:totp:reset" in done
    assert any("turned off" in n or "無効" in n or "オフ" in n for n in mails_to(stack, login))
    with stack.db() as db:
        (left,) = db.execute(
            "SELECT count(*) FROM recovery_codes r JOIN client_users u ON u.id = r.account_id "
            "WHERE r.kind = 'client' AND u.login = ?", (login,)).fetchone()
    assert left == 0 and codes


def test_company_that_requires_2fa_cannot_turn_it_off(stack: Stack) -> None:
    code = "r" + uuid.uuid4().hex[:8]
    stack.kinko("company", "add", code, "--name", "二要素必須株式会社")
    with stack.db() as db:
        db.execute("UPDATE companies SET require_2fa = TRUE WHERE code = ?", (code,))
    login, pw = new_user(stack, company=code)

    # The first sign-in goes through enrolment before anything else.
    s, r = password_step(stack, login, pw, company=code)
    assert r.status_code == 302 and path_of(r) == "/totp/enrol"
    assert s.get(stack.client_url + "/account", allow_redirects=False).status_code == 302
    totp, _codes = enrol(stack, s, pw)

    page = account(stack, s)
    assert "/account/totp/disable" not in page
    r = post(stack, s, "/account/totp/disable", password=pw, code=totp.code())
    assert r.status_code == 403
    assert "/account/recovery-codes" in account(stack, s)  # still enrolled
    assert "account:totp:reset" not in actions(stack, login)


@pytest.mark.parametrize("action", ["/account/recovery-codes", "/account/totp/disable"])
def test_factor_changes_need_an_enrolled_factor(stack: Stack, action: str) -> None:
    login, pw = new_user(stack)
    s = sign_in(stack, login, pw)
    r = post(stack, s, action, password=pw, code="123456")
    assert r.status_code == 400
    assert not RECOVERY.findall(r.text)
