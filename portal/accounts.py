"""Account administration as plain service functions: companies, client users,
office staff, password resets, second-factor resets, lockouts and the password
policy.  The office console (``portal.office.admin``) and the ``kinko`` CLI
both call these; neither writes account rows itself.

Every function works inside the caller's transaction (``with db.begin():``):
it validates, changes state and appends its audit event, so the change and
its record commit together or not at all.  Bad input raises
:class:`AccountError` with a short code, before anything is written.

Security invariants kept here:

* no password, initial or chosen, ever reaches an audit record or a log;
  an initial password is returned to the caller once and stored only as an
  argon2id hash;
* resetting a password or a second factor, or disabling an account, ends
  every server-side session of that account at once;
* notices about changed credentials are collected in an ``outbox`` and sent
  by the caller *after* the commit (:func:`send_notices`): a rolled-back
  change sends nothing, and a notice never carries a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyotp
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import notify
from .audit import Actor, Tag, record
from .auth import recovery, sessions, throttle
from .auth.passwords import hash_password, initial_password
from .auth.policy import PasswordPolicy, load_policy, problems, save_policy
from .i18n import N_
from .i18n import translations as _translations
from .models import ClientUser, Company, PasswordHistory, Staff, utcnow
from .settings import Settings

Kind = Literal["client", "staff"]
ROLES = ("manager", "handler")

_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# The audit log refuses anything that looks like a My Number; refuse such an
# identifier here, with a clear code, rather than fail when it is recorded.
_TWELVE_DIGITS = re.compile(r"\d{4}[- ]?\d{4}[- ]?\d{4}")


class AccountError(Exception):
    """Bad input for an account change.  ``code`` is one of: ``bad_code``,
    ``bad_login``, ``bad_name``, ``bad_email``, ``bad_role``, ``bad_company``,
    ``bad_totp_secret``, ``bad_policy``, ``duplicate``, ``not_found``,
    ``policy`` (``problems`` lists the password rules broken) or ``self``."""

    def __init__(self, code: str, problems: Sequence[str] = ()) -> None:
        super().__init__(code if not problems else f"{code}: {', '.join(problems)}")
        self.code = code
        self.problems = list(problems)




@dataclass(frozen=True)
class Notice:
    """An e-mail to send after the commit: who and which event, never a secret."""

    to: str
    event: str  # a key of NOTICES
    lang: str = "ja"  # the recipient's language


NOTICES: dict[str, tuple[str, str]] = {
    "password_reset": (
        N_("[kinko] Your password was reset by the office"),
        N_("The office reset the password of your kinko account and ended all of its "
           "sessions. The office will give you a new initial password; you will be asked "
           "to change it when you sign in. If you did not ask for this, please contact "
           "the office at once.")),
    "totp_reset": (
        N_("[kinko] Your two-step verification was reset by the office"),
        N_("The office reset the two-step verification of your kinko account and ended "
           "all of its sessions. You may be asked to set up your authenticator app again "
           "at your next sign-in. If you did not ask for this, please contact the office "
           "at once.")),
}





def send_notices(settings: Settings, notices: Iterable[Notice]) -> None:
    """Send the collected notices (call after the transaction committed).

    Each in its recipient's language (``Notice.lang``, from the account),
    whoever triggered the change and whatever their UI language.
    """
    for notice in notices:
        tr = _translations(notice.lang)
        subject, body = NOTICES[notice.event]
        notify.send(settings, notice.to, tr.gettext(subject), tr.gettext(body))


# -- lookups -----------------------------------------------------------------------


def company_by_code(db: Session, code: str) -> Company:
    found = db.execute(select(Company).where(Company.code == code)).scalar_one_or_none()
    if found is None:
        raise AccountError("not_found")
    return found


def client_user(db: Session, company: Company, login_or_id: str | int) -> ClientUser:
    """A user of ``company`` by id (int) or login (str); another company's user
    is ``not_found``."""
    if isinstance(login_or_id, int):
        user = db.get(ClientUser, login_or_id)
    else:
        user = db.execute(select(ClientUser).where(
            ClientUser.company_id == company.id,
            ClientUser.login == login_or_id)).scalar_one_or_none()
    if user is None or user.company_id != company.id:
        raise AccountError("not_found")
    return user


def staff_by_login(db: Session, login: str) -> Staff:
    found = db.execute(select(Staff).where(Staff.login == login)).scalar_one_or_none()
    if found is None:
        raise AccountError("not_found")
    return found


# -- validation ----------------------------------------------------------------------


def _identifier(value: str, pattern: re.Pattern[str], code: str) -> str:
    value = (value or "").strip()
    if not pattern.fullmatch(value) or _TWELVE_DIGITS.search(value):
        raise AccountError(code)
    return value


def _name(value: str, *, required: bool) -> str:
    value = (value or "").strip()
    if len(value) > 200 or (required and not value):
        raise AccountError("bad_name")
    return value


def _email(value: str | None) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise AccountError("bad_email")
    return value


def _totp_secret(secret: str | None) -> str | None:
    if secret is None:
        return None
    secret = secret.strip().replace(" ", "").upper()
    try:
        pyotp.TOTP(secret).now()
    except Exception as exc:  # noqa: BLE001 - any decoding problem is a bad secret
        raise AccountError("bad_totp_secret") from exc
    return secret


def _password(db: Session, password: str | None) -> tuple[str, bool]:
    """(password, generated).  A given password must meet the office policy."""
    if password is None:
        return initial_password(), True
    issues = problems(load_policy(db), password)
    if issues:
        raise AccountError("policy", issues)
    return password, False


def _companies(db: Session, company_ids: Iterable[int]) -> list[Company]:
    ids = sorted(set(company_ids))
    found = list(db.execute(select(Company).where(Company.id.in_(ids))).scalars()) if ids else []
    if len(found) != len(ids):
        raise AccountError("bad_company")
    return sorted(found, key=lambda c: c.code)


def _target(kind: Kind, account: Any) -> dict[str, Any]:
    return {"target_kind": kind, "target_id": account.id, "target_login": account.login}


def _company_of(kind: Kind, account: Any) -> int | None:
    return account.company_id if kind == "client" else None


# -- companies ---------------------------------------------------------------------------


def create_company(db: Session, audit_key: bytes, actor: Actor, code: str, name: str,
                   auto_pull: bool = False, require_2fa: bool = False, *,
                   remote_addr: str | None = None) -> Company:
    """A new client company (and so its room).  Raises ``bad_code``, ``bad_name``,
    ``duplicate``."""
    code = _identifier(code, _CODE, "bad_code")
    name = _name(name, required=True)
    if db.execute(select(Company.id).where(Company.code == code)).first():
        raise AccountError("duplicate")
    company = Company(code=code, name=name, auto_pull=auto_pull, require_2fa=require_2fa)
    db.add(company)
    db.flush()
    record(db, audit_key, Tag.COMPANY_CREATED, actor, company_id=company.id,
           remote_addr=remote_addr,
           details={"code": code, "auto_pull": auto_pull, "require_2fa": require_2fa})
    return company


def update_company(db: Session, audit_key: bytes, actor: Actor, company: Company, *,
                   name: str | None = None, auto_pull: bool | None = None,
                   require_2fa: bool | None = None,
                   remote_addr: str | None = None) -> list[str]:
    """Change what is given (None: unchanged).  Returns the changed field names;
    nothing is recorded when nothing changed.  Raises ``bad_name``."""
    changes: dict[str, Any] = {}
    if name is not None:
        name = _name(name, required=True)
        if name != company.name:
            company.name = name
            changes["name"] = True  # the name itself stays out of the log
    for field, value in (("auto_pull", auto_pull), ("require_2fa", require_2fa)):
        if value is not None and bool(getattr(company, field)) != value:
            changes[field] = [bool(getattr(company, field)), value]
            setattr(company, field, value)
    if changes:
        record(db, audit_key, Tag.COMPANY_UPDATED, actor, company_id=company.id,
               remote_addr=remote_addr, details={"code": company.code, "changes": changes})
    return sorted(changes)


# -- accounts ----------------------------------------------------------------------------


def create_client_user(db: Session, audit_key: bytes, actor: Actor, company_id: int,
                       login: str, display_name: str = "", email: str | None = None,
                       password: str | None = None, *, totp_secret: str | None = None,
                       remote_addr: str | None = None) -> tuple[ClientUser, str | None]:
    """A client HR user.  Without ``password`` an initial one is generated and
    returned (show it once; the user must change it at first sign-in); a given
    password must meet the policy and is not returned.  Raises ``not_found``
    (company), ``bad_login``, ``bad_name``, ``bad_email``, ``bad_totp_secret``,
    ``duplicate``, ``policy``."""
    company = db.get(Company, company_id)
    if company is None:
        raise AccountError("not_found")
    login = _identifier(login, _LOGIN, "bad_login")
    display_name, email = _name(display_name, required=False), _email(email)
    secret = _totp_secret(totp_secret)
    if db.execute(select(ClientUser.id).where(ClientUser.company_id == company.id,
                                              ClientUser.login == login)).first():
        raise AccountError("duplicate")
    pw, generated = _password(db, password)
    user = ClientUser(company_id=company.id, login=login, display_name=display_name,
                      email=email, password_hash=hash_password(pw), totp_secret=secret,
                      must_change_password=generated)
    db.add(user)
    db.flush()
    record(db, audit_key, Tag.CLIENT_USER_CREATED, actor, company_id=company.id,
           remote_addr=remote_addr,
           details={"user_id": user.id, "login": login, "initial_password": generated})
    return user, (pw if generated else None)


def create_staff(db: Session, audit_key: bytes, actor: Actor, login: str, role: str,
                 display_name: str = "", email: str | None = None,
                 company_ids: Iterable[int] = (), password: str | None = None, *,
                 totp_secret: str | None = None,
                 remote_addr: str | None = None) -> tuple[Staff, str | None]:
    """An office person.  Without ``totp_secret`` (the normal case) they enrol
    their own authenticator at the first sign-in, so nobody else ever sees the
    secret.  Password handling as :func:`create_client_user`.  Raises
    ``bad_login``, ``bad_role``, ``bad_name``, ``bad_email``, ``bad_company``,
    ``bad_totp_secret``, ``duplicate``, ``policy``."""
    login = _identifier(login, _LOGIN, "bad_login")
    if role not in ROLES:
        raise AccountError("bad_role")
    display_name, email = _name(display_name, required=False), _email(email)
    secret = _totp_secret(totp_secret)
    companies = _companies(db, company_ids)
    if db.execute(select(Staff.id).where(Staff.login == login)).first():
        raise AccountError("duplicate")
    pw, generated = _password(db, password)
    staff = Staff(login=login, role=role, display_name=display_name or login, email=email,
                  password_hash=hash_password(pw), totp_secret=secret,
                  must_change_password=generated)
    staff.companies = companies
    db.add(staff)
    db.flush()
    record(db, audit_key, Tag.STAFF_CREATED, actor, remote_addr=remote_addr,
           details={"staff_id": staff.id, "login": login, "role": role,
                    "companies": [c.code for c in companies],
                    "initial_password": generated})
    return staff, (pw if generated else None)


def set_staff_companies(db: Session, audit_key: bytes, actor: Actor, staff: Staff,
                        company_ids: Iterable[int], *,
                        remote_addr: str | None = None) -> bool:
    """Replace the companies a handler serves.  Returns whether anything changed.
    Raises ``bad_company``."""
    companies = _companies(db, company_ids)
    before = sorted(c.code for c in staff.companies)
    after = [c.code for c in companies]
    if before == after:
        return False
    staff.companies = companies
    record(db, audit_key, Tag.STAFF_UPDATED, actor, remote_addr=remote_addr,
           details={"staff_id": staff.id, "login": staff.login,
                    "companies": {"before": before, "after": after}})
    return True


def reset_password(db: Session, audit_key: bytes, actor: Actor, kind: Kind, account: Any, *,
                   outbox: list[Notice], remote_addr: str | None = None) -> str:
    """Give the account a new initial password and return it (show it once).

    The user must change it at the next sign-in; every session ends; the
    account is unlocked (a reset is how a locked-out user gets back in).
    The old hash goes into the history so it cannot simply be set again.
    """
    password = initial_password()
    db.add(PasswordHistory(kind=kind, account_id=account.id,
                           password_hash=account.password_hash))
    account.password_hash = hash_password(password)
    account.password_changed_at = utcnow()
    account.must_change_password = True
    was_locked = account.locked_at is not None
    throttle.unlock(account)
    ended = sessions.end_all(db, kind, account.id)
    record(db, audit_key, Tag.PASSWORD_RESET, actor, company_id=_company_of(kind, account),
           remote_addr=remote_addr,
           details={**_target(kind, account), "sessions_ended": ended, "unlocked": was_locked})
    if account.email:
        outbox.append(Notice(account.email, "password_reset", account.language))
    return password


def reset_totp(db: Session, audit_key: bytes, actor: Actor, kind: Kind, account: Any, *,
               outbox: list[Notice], remote_addr: str | None = None) -> None:
    """Remove the second factor and its recovery codes, and end every session.

    Staff (and users of a company that requires 2FA) enrol again at their
    next sign-in, after the password step.
    """
    had = account.totp_secret is not None
    account.totp_secret = None
    account.totp_last_step = None
    recovery.clear(db, kind, account.id)
    ended = sessions.end_all(db, kind, account.id)
    record(db, audit_key, Tag.TOTP_RESET, actor, company_id=_company_of(kind, account),
           remote_addr=remote_addr,
           details={**_target(kind, account), "had_totp": had, "sessions_ended": ended})
    if account.email:
        outbox.append(Notice(account.email, "totp_reset", account.language))


def set_active(db: Session, audit_key: bytes, actor: Actor, kind: Kind, account: Any,
               active: bool, *, remote_addr: str | None = None) -> bool:
    """Enable or disable an account.  Returns whether anything changed.

    Disabling ends every session at once (the session loader also refuses a
    disabled account, and so does the API token check).  A manager cannot
    disable their own account (``self``): the office would lose its way in.
    """
    if not active and kind == "staff" and actor.kind == "staff" and actor.id == account.id:
        raise AccountError("self")
    if bool(account.active) == active:
        return False
    account.active = active
    ended = 0 if active else sessions.end_all(db, kind, account.id)
    record(db, audit_key, Tag.ACCOUNT_ENABLED if active else Tag.ACCOUNT_DISABLED, actor,
           company_id=_company_of(kind, account), remote_addr=remote_addr,
           details={**_target(kind, account), "sessions_ended": ended})
    return True


def unlock(db: Session, audit_key: bytes, actor: Actor, kind: Kind, account: Any, *,
           remote_addr: str | None = None) -> None:
    """Clear the lockout and the failure counter (``portal.auth.throttle``)."""
    before = {"locked": account.locked_at is not None,
              "failed_logins": account.failed_logins or 0}
    throttle.unlock(account)
    record(db, audit_key, Tag.ACCOUNT_UNLOCKED, actor, company_id=_company_of(kind, account),
           remote_addr=remote_addr, details={**_target(kind, account), **before})


def set_password_policy(db: Session, audit_key: bytes, actor: Actor, policy: PasswordPolicy,
                        *, remote_addr: str | None = None) -> bool:
    """Store a new password policy.  Returns whether it changed; the audit event
    carries the old and new values.  Raises ``bad_policy``."""
    try:
        policy.validated()
    except ValueError as exc:
        raise AccountError("bad_policy") from exc
    old = load_policy(db)
    if old == policy:
        return False
    save_policy(db, policy)
    old_d, new_d = asdict(old), asdict(policy)
    record(db, audit_key, Tag.POLICY_CHANGED, actor, remote_addr=remote_addr,
           details={"policy": "password", "old": old_d, "new": new_d,
                    "changed": sorted(k for k in new_d if new_d[k] != old_d[k])})
    return True
