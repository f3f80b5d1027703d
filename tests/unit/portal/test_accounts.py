"""portal.accounts against a real initialised SQLite instance (in process).

Each service function: the state it changes, the audit event it writes in
the same transaction (never a password), and the AccountError codes.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from portal import accounts
from portal.accounts import AccountError, Notice
from portal.audit import Actor, Tag, verify
from portal.auth import recovery, sessions
from portal.auth.passwords import verify_password
from portal.auth.policy import PasswordPolicy, load_policy
from portal.instance import init_instance
from portal.models import (
    AuditEvent,
    ClientUser,
    Company,
    PasswordHistory,
    RecoveryCode,
    Staff,
    utcnow,
)
from portal.services import Services, build_services
from portal.settings import Settings

BOSS = Actor("staff", 999, "boss")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Services:
    home: Path = tmp_path_factory.mktemp("kinko-accounts")
    settings = Settings.from_env({"KINKO_HOME": str(home),
                                  "KINKO_CLAMD": "unix:///nonexistent/clamd.sock"})
    init_instance(settings)
    return build_services(settings, "office")


def uid(prefix: str = "x") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def events(svc: Services, action: str) -> list[dict[str, Any]]:
    with svc.sessions() as db:
        rows = db.execute(select(AuditEvent).where(AuditEvent.action == action)
                          .order_by(AuditEvent.id)).scalars().all()
        return [{"actor": (r.actor_kind, r.actor_id, r.actor_label),
                 "company_id": r.company_id, "remote_addr": r.remote_addr,
                 "details": json.loads(r.details)} for r in rows]


def all_audit_text(svc: Services) -> str:
    with svc.sessions() as db:
        return "\n".join(f"{e.actor_label} {e.details}"
                         for e in db.execute(select(AuditEvent)).scalars())


def make_company(svc: Services, **kw: Any) -> tuple[int, str]:
    code = uid("c")
    with svc.sessions() as db, db.begin():
        c = accounts.create_company(db, svc.audit_key, BOSS, code, "株式会社テスト", **kw)
        return c.id, code


def make_user(svc: Services, company_id: int, **kw: Any) -> tuple[int, str | None]:
    with svc.sessions() as db, db.begin():
        user, pw = accounts.create_client_user(db, svc.audit_key, BOSS, company_id, uid("u"),
                                               "人事 花子", "hr@example.jp", **kw)
        return user.id, pw


def live_session(svc: Services, kind: str, account_id: int) -> str:
    with svc.sessions() as db, db.begin():
        return sessions.start(db, kind, account_id, remote_addr="10.0.0.1", user_agent="t",
                              absolute=timedelta(hours=1))


def is_live(svc: Services, kind: str, token: str) -> bool:
    with svc.sessions() as db, db.begin():
        return sessions.resolve(db, token, kind, timedelta(minutes=30)) is not None


# -- companies -------------------------------------------------------------------------


def test_create_company_records_and_refuses_duplicates(svc: Services) -> None:
    cid, code = make_company(svc, auto_pull=True, require_2fa=True)
    with svc.sessions() as db:
        c = db.get(Company, cid)
        assert c is not None and c.code == code and c.auto_pull and c.require_2fa
    ev = [e for e in events(svc, Tag.COMPANY_CREATED) if e["company_id"] == cid]
    assert len(ev) == 1
    assert ev[0]["actor"] == ("staff", 999, "boss")
    assert ev[0]["details"] == {"code": code, "auto_pull": True, "require_2fa": True}
    with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
        accounts.create_company(db, svc.audit_key, BOSS, code, "again")
    assert err.value.code == "duplicate"


@pytest.mark.parametrize("code,name,expected", [
    ("", "名前", "bad_code"), ("has space", "名前", "bad_code"), ("日本", "名前", "bad_code"),
    ("-lead", "名前", "bad_code"), ("x" * 33, "名前", "bad_code"),
    ("123456789012", "名前", "bad_code"),  # would look like a My Number in the log
    ("okcode", "", "bad_name"), ("okcode2", "x" * 201, "bad_name"),
])
def test_create_company_validates(svc: Services, code: str, name: str, expected: str) -> None:
    before = len(events(svc, Tag.COMPANY_CREATED))
    with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
        accounts.create_company(db, svc.audit_key, BOSS, code, name)
    assert err.value.code == expected
    assert len(events(svc, Tag.COMPANY_CREATED)) == before


def test_update_company_records_only_changes(svc: Services) -> None:
    cid, code = make_company(svc)
    with svc.sessions() as db, db.begin():
        c = accounts.company_by_code(db, code)
        changed = accounts.update_company(db, svc.audit_key, BOSS, c, name="新しい名前",
                                          auto_pull=False, require_2fa=True,
                                          remote_addr="192.0.2.7")
    assert changed == ["name", "require_2fa"]
    with svc.sessions() as db, db.begin():
        c = accounts.company_by_code(db, code)
        assert c.name == "新しい名前" and c.require_2fa and not c.auto_pull
        assert accounts.update_company(db, svc.audit_key, BOSS, c, name="新しい名前",
                                       require_2fa=True) == []
    ev = [e for e in events(svc, Tag.COMPANY_UPDATED) if e["company_id"] == cid]
    assert len(ev) == 1
    assert ev[0]["remote_addr"] == "192.0.2.7"
    assert ev[0]["details"]["changes"] == {"name": True, "require_2fa": [False, True]}
    assert "新しい名前" not in json.dumps(ev[0]["details"], ensure_ascii=False)


def test_company_by_code_not_found(svc: Services) -> None:
    with svc.sessions() as db, pytest.raises(AccountError) as err:
        accounts.company_by_code(db, "nope-none")
    assert err.value.code == "not_found"


# -- client users ------------------------------------------------------------------------


def test_create_client_user_generates_an_initial_password(svc: Services) -> None:
    cid, _ = make_company(svc)
    user_id, pw = make_user(svc, cid)
    assert pw is not None and len(pw) >= 12
    with svc.sessions() as db:
        u = db.get(ClientUser, user_id)
        assert u is not None and u.must_change_password and u.totp_secret is None
        assert verify_password(u.password_hash, pw)
        assert u.display_name == "人事 花子" and u.email == "hr@example.jp"
    ev = [e for e in events(svc, Tag.CLIENT_USER_CREATED) if e["details"]["user_id"] == user_id]
    assert len(ev) == 1 and ev[0]["company_id"] == cid
    assert ev[0]["details"]["initial_password"] is True
    assert pw not in all_audit_text(svc)


def test_create_client_user_with_a_password_checks_the_db_policy(svc: Services) -> None:
    cid, _ = make_company(svc)
    user_id, pw = make_user(svc, cid, password="Kinko-Passw0rd-42")
    assert pw is None
    with svc.sessions() as db:
        u = db.get(ClientUser, user_id)
        assert u is not None and not u.must_change_password
    for bad, rule in (("short1", "too_short"), ("onlyletterslong", "letters_digits"),
                      ("password1", "common")):
        with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
            accounts.create_client_user(db, svc.audit_key, BOSS, cid, uid("u"), "", None, bad)
        assert err.value.code == "policy" and rule in err.value.problems
    # The policy in the database applies, not a built-in default.
    with svc.sessions() as db, db.begin():
        accounts.set_password_policy(db, svc.audit_key, BOSS, PasswordPolicy(min_length=20))
    try:
        with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
            accounts.create_client_user(db, svc.audit_key, BOSS, cid, uid("u"), "", None,
                                        "Kinko-Passw0rd-42")
        assert err.value.problems == ["too_short"]
    finally:
        with svc.sessions() as db, db.begin():
            accounts.set_password_policy(db, svc.audit_key, BOSS, PasswordPolicy())


def test_create_client_user_errors(svc: Services) -> None:
    cid, _ = make_company(svc)
    login = uid("u")
    with svc.sessions() as db, db.begin():
        accounts.create_client_user(db, svc.audit_key, BOSS, cid, login)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"company_id": cid, "login": login}, "duplicate"),
        ({"company_id": 10**9, "login": uid()}, "not_found"),
        ({"company_id": cid, "login": "bad login"}, "bad_login"),
        ({"company_id": cid, "login": uid(), "email": "not-an-address"}, "bad_email"),
        ({"company_id": cid, "login": uid(), "totp_secret": "not base32!"}, "bad_totp_secret"),
    ]
    for kw, code in cases:
        with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
            accounts.create_client_user(db, svc.audit_key, BOSS, **kw)
        assert err.value.code == code, kw


def test_the_same_login_may_exist_in_two_companies(svc: Services) -> None:
    (a, _), (b, _) = make_company(svc), make_company(svc)
    with svc.sessions() as db, db.begin():
        accounts.create_client_user(db, svc.audit_key, BOSS, a, "hr")
        accounts.create_client_user(db, svc.audit_key, BOSS, b, "hr")


# -- staff -----------------------------------------------------------------------------


def test_create_staff_without_totp_enrols_later(svc: Services) -> None:
    (a, code_a), (b, code_b) = make_company(svc), make_company(svc)
    login = uid("s")
    with svc.sessions() as db, db.begin():
        s, pw = accounts.create_staff(db, svc.audit_key, BOSS, login, "handler", "担当 一郎",
                                      "ichiro@example.jp", [b, a])
        sid = s.id
    assert pw is not None
    with svc.sessions() as db:
        s2 = db.get(Staff, sid)
        assert s2 is not None and s2.totp_secret is None and s2.must_change_password
        assert s2.role == "handler" and {c.id for c in s2.companies} == {a, b}
        assert verify_password(s2.password_hash, pw)
    ev = [e for e in events(svc, Tag.STAFF_CREATED) if e["details"]["staff_id"] == sid][0]
    assert ev["details"]["companies"] == sorted([code_a, code_b])
    assert ev["details"]["role"] == "handler" and ev["details"]["login"] == login
    assert pw not in all_audit_text(svc)


def test_create_staff_with_secret_and_password(svc: Services) -> None:
    secret = pyotp.random_base32()
    with svc.sessions() as db, db.begin():
        s, pw = accounts.create_staff(db, svc.audit_key, BOSS, uid("s"), "manager",
                                      password="Kinko-Passw0rd-42", totp_secret=secret)
        assert pw is None and s.totp_secret == secret and not s.must_change_password
        assert s.display_name == s.login


def test_create_staff_errors(svc: Services) -> None:
    login = uid("s")
    with svc.sessions() as db, db.begin():
        accounts.create_staff(db, svc.audit_key, BOSS, login, "handler")
    for kw, code in (({"login": login, "role": "handler"}, "duplicate"),
                     ({"login": uid(), "role": "admin"}, "bad_role"),
                     ({"login": uid(), "role": "handler", "company_ids": [10**9]},
                      "bad_company"),
                     ({"login": uid(), "role": "handler", "password": "abc"}, "policy")):
        with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
            accounts.create_staff(db, svc.audit_key, BOSS, **kw)
        assert err.value.code == code, kw


def test_set_staff_companies(svc: Services) -> None:
    (a, code_a), (b, code_b) = make_company(svc), make_company(svc)
    with svc.sessions() as db, db.begin():
        s, _ = accounts.create_staff(db, svc.audit_key, BOSS, uid("s"), "handler",
                                     company_ids=[a])
        sid = s.id
    with svc.sessions() as db, db.begin():
        s = accounts.staff_by_login(db, db.get(Staff, sid).login)  # type: ignore[union-attr]
        assert accounts.set_staff_companies(db, svc.audit_key, BOSS, s, [b])
        assert not accounts.set_staff_companies(db, svc.audit_key, BOSS, s, [b])
        with pytest.raises(AccountError) as err:
            accounts.set_staff_companies(db, svc.audit_key, BOSS, s, [b, 10**9])
        assert err.value.code == "bad_company"
    with svc.sessions() as db:
        s2 = db.get(Staff, sid)
        assert s2 is not None and [c.id for c in s2.companies] == [b]
    ev = [e for e in events(svc, Tag.STAFF_UPDATED) if e["details"]["staff_id"] == sid]
    assert len(ev) == 1
    assert ev[0]["details"]["companies"] == {"before": [code_a], "after": [code_b]}


# -- resets, disable, unlock ------------------------------------------------------------


def test_reset_password(svc: Services) -> None:
    cid, code = make_company(svc)
    user_id, first = make_user(svc, cid, password="Kinko-Passw0rd-42")
    token = live_session(svc, "client", user_id)
    with svc.sessions() as db, db.begin():
        u = db.get(ClientUser, user_id)
        assert u is not None
        u.locked_at, u.failed_logins = utcnow(), 10
    outbox: list[Notice] = []
    with svc.sessions() as db, db.begin():
        u = accounts.client_user(db, accounts.company_by_code(db, code), user_id)
        new = accounts.reset_password(db, svc.audit_key, BOSS, "client", u, outbox=outbox)
    with svc.sessions() as db:
        u = db.get(ClientUser, user_id)
        assert u is not None and verify_password(u.password_hash, new)
        assert not verify_password(u.password_hash, "Kinko-Passw0rd-42")
        assert u.must_change_password and u.locked_at is None and u.failed_logins == 0
        history = db.execute(select(PasswordHistory).where(
            PasswordHistory.kind == "client", PasswordHistory.account_id == user_id)).scalars()
        assert any(verify_password(h.password_hash, "Kinko-Passw0rd-42") for h in history)
    assert not is_live(svc, "client", token)
    assert outbox == [Notice("hr@example.jp", "password_reset")]
    ev = [e for e in events(svc, Tag.PASSWORD_RESET) if e["details"]["target_id"] == user_id]
    assert len(ev) == 1 and ev[0]["company_id"] == cid
    assert ev[0]["details"]["sessions_ended"] == 1 and ev[0]["details"]["unlocked"] is True
    assert new not in all_audit_text(svc)


def test_reset_totp_clears_secret_codes_and_sessions(svc: Services) -> None:
    login = uid("s")
    with svc.sessions() as db, db.begin():
        s, _ = accounts.create_staff(db, svc.audit_key, BOSS, login, "handler",
                                     email="s@example.jp", totp_secret=pyotp.random_base32())
        s.totp_last_step = 12345
        sid = s.id
        recovery.regenerate(db, "staff", sid)
    token = live_session(svc, "staff", sid)
    outbox: list[Notice] = []
    with svc.sessions() as db, db.begin():
        s = accounts.staff_by_login(db, login)
        accounts.reset_totp(db, svc.audit_key, BOSS, "staff", s, outbox=outbox)
    with svc.sessions() as db:
        s2 = db.get(Staff, sid)
        assert s2 is not None and s2.totp_secret is None and s2.totp_last_step is None
        assert not db.execute(select(RecoveryCode).where(
            RecoveryCode.kind == "staff", RecoveryCode.account_id == sid)).first()
    assert not is_live(svc, "staff", token)
    assert outbox == [Notice("s@example.jp", "totp_reset")]
    ev = [e for e in events(svc, Tag.TOTP_RESET) if e["details"]["target_id"] == sid]
    assert ev[0]["details"]["had_totp"] is True and ev[0]["company_id"] is None


def test_disable_ends_sessions_and_enable_restores(svc: Services) -> None:
    cid, code = make_company(svc)
    user_id, _ = make_user(svc, cid)
    token = live_session(svc, "client", user_id)
    with svc.sessions() as db, db.begin():
        u = accounts.client_user(db, accounts.company_by_code(db, code), user_id)
        assert accounts.set_active(db, svc.audit_key, BOSS, "client", u, False)
        assert not accounts.set_active(db, svc.audit_key, BOSS, "client", u, False)
    assert not is_live(svc, "client", token)
    with svc.sessions() as db, db.begin():
        u = accounts.client_user(db, accounts.company_by_code(db, code), user_id)
        assert not u.active
        assert accounts.set_active(db, svc.audit_key, BOSS, "client", u, True)
        assert u.active
    dis = [e for e in events(svc, Tag.ACCOUNT_DISABLED) if e["details"]["target_id"] == user_id
           and e["details"]["target_kind"] == "client"]
    ena = [e for e in events(svc, Tag.ACCOUNT_ENABLED) if e["details"]["target_id"] == user_id
           and e["details"]["target_kind"] == "client"]
    assert len(dis) == 1 and dis[0]["details"]["sessions_ended"] == 1 and len(ena) == 1


def test_a_manager_cannot_disable_themselves(svc: Services) -> None:
    login = uid("m")
    with svc.sessions() as db, db.begin():
        s, _ = accounts.create_staff(db, svc.audit_key, BOSS, login, "manager")
        me = Actor("staff", s.id, login)
    with svc.sessions() as db, db.begin():
        s = accounts.staff_by_login(db, login)
        with pytest.raises(AccountError) as err:
            accounts.set_active(db, svc.audit_key, me, "staff", s, False)
        assert err.value.code == "self" and s.active
        # Another manager (or the CLI) can.
        assert accounts.set_active(db, svc.audit_key, BOSS, "staff", s, False)


def test_unlock(svc: Services) -> None:
    cid, code = make_company(svc)
    user_id, _ = make_user(svc, cid)
    with svc.sessions() as db, db.begin():
        u = db.get(ClientUser, user_id)
        assert u is not None
        u.locked_at, u.failed_logins, u.throttled_until = utcnow(), 10, utcnow()
    with svc.sessions() as db, db.begin():
        u = accounts.client_user(db, accounts.company_by_code(db, code), user_id)
        accounts.unlock(db, svc.audit_key, BOSS, "client", u)
    with svc.sessions() as db:
        u = db.get(ClientUser, user_id)
        assert u is not None and u.locked_at is None and u.failed_logins == 0
        assert u.throttled_until is None
    ev = [e for e in events(svc, Tag.ACCOUNT_UNLOCKED) if e["details"]["target_id"] == user_id]
    assert ev[0]["details"]["locked"] is True and ev[0]["details"]["failed_logins"] == 10


def test_client_user_lookup_is_per_company(svc: Services) -> None:
    (a, code_a), (_b, code_b) = make_company(svc), make_company(svc)
    user_id, _ = make_user(svc, a)
    with svc.sessions() as db, pytest.raises(AccountError) as err:
        accounts.client_user(db, accounts.company_by_code(db, code_b), user_id)
    assert err.value.code == "not_found"
    with svc.sessions() as db:
        assert accounts.client_user(db, accounts.company_by_code(db, code_a), user_id)


# -- policy ------------------------------------------------------------------------------


def test_set_password_policy(svc: Services) -> None:
    try:
        with svc.sessions() as db, db.begin():
            assert accounts.set_password_policy(
                db, svc.audit_key, BOSS, PasswordPolicy(min_length=12, expiry_days=90))
            assert not accounts.set_password_policy(
                db, svc.audit_key, BOSS, PasswordPolicy(min_length=12, expiry_days=90))
        with svc.sessions() as db:
            assert load_policy(db) == PasswordPolicy(min_length=12, expiry_days=90)
        ev = events(svc, Tag.POLICY_CHANGED)[-1]["details"]
        assert ev["old"]["min_length"] == 8 and ev["new"]["min_length"] == 12
        assert ev["changed"] == ["expiry_days", "min_length"] and ev["policy"] == "password"
        for bad in (PasswordPolicy(min_length=4), PasswordPolicy(min_length=50, max_length=20),
                    PasswordPolicy(expiry_days=-1), PasswordPolicy(history=99)):
            with svc.sessions() as db, db.begin(), pytest.raises(AccountError) as err:
                accounts.set_password_policy(db, svc.audit_key, BOSS, bad)
            assert err.value.code == "bad_policy"
    finally:
        with svc.sessions() as db, db.begin():
            accounts.set_password_policy(db, svc.audit_key, BOSS, PasswordPolicy())


# -- notices and the chain ------------------------------------------------------------------


def test_send_notices_writes_the_outbox_without_secrets(svc: Services) -> None:
    outbox = svc.settings.home / "outbox"
    before = set(outbox.iterdir())
    accounts.send_notices(svc.settings, [Notice("a@example.jp", "password_reset"),
                                         Notice("b@example.jp", "totp_reset")])
    new = sorted(set(outbox.iterdir()) - before)
    assert len(new) == 2
    text = "".join(p.read_text() for p in new)
    assert "a@example.jp" in text and "b@example.jp" in text


def test_a_failed_change_writes_nothing(svc: Services) -> None:
    cid, _ = make_company(svc)
    with svc.sessions() as db:
        count = len(db.execute(select(AuditEvent.id)).all())
    with pytest.raises(AccountError), svc.sessions() as db, db.begin():
        accounts.create_client_user(db, svc.audit_key, BOSS, cid, uid("u"))
        accounts.create_company(db, svc.audit_key, BOSS, "bad code", "x")  # rolls both back
    with svc.sessions() as db:
        assert len(db.execute(select(AuditEvent.id)).all()) == count


def test_the_audit_chain_is_intact(svc: Services) -> None:
    with svc.sessions() as db:
        count, broken = verify(db, svc.audit_key)
    assert broken is None and count > 10
