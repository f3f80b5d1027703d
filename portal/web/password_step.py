"""The password step both login forms share: throttling, lockout, one answer."""

from __future__ import annotations

from typing import Any

from flask import flash, render_template
from flask_babel import gettext as _
from sqlalchemy.orm import Session

from ..audit import Actor, Tag, record
from ..auth import throttle
from ..auth.passwords import verify_password
from .base import remote_addr, services
from .signin import actor_of, after_password, company_of, complete


def password_step(db_lookup: Any, kind: str, password: str, template: str) -> Any:
    """Check ``password`` for the account ``db_lookup(db)`` returns (or None).

    Unknown login, wrong password, disabled, throttled and locked accounts
    all get the same answer and cost the same time; only the audit log and
    the manager see the difference.
    """
    svc = services()
    addr = remote_addr()
    outcome, account_id = "failed", None
    with svc.sessions() as db, db.begin():
        if throttle.address_blocked(db, addr):
            record(db, svc.audit_key, Tag.ADDRESS_THROTTLED, Actor("anonymous"),
                   remote_addr=addr)
            outcome = "blocked"
        else:
            account = db_lookup(db)
            ok = verify_password(account.password_hash if account else None, password)
            state = throttle.account_state(account) if account else "unknown"
            if ok and account is not None and account.active and state == "ok":
                throttle.record_success(account)
                response = after_password(db, kind, account)
                outcome, account_id = "ok", account.id
            else:
                _failed(db, kind, account, state, addr)
    if outcome == "blocked":
        flash(_("Too many failed attempts from your network. Please wait a while and try "
                "again."), "error")
        return render_template(template), 429
    if outcome == "failed":
        flash(_("The login details are incorrect. After repeated failures the account is "
                "locked; the office can unlock it."), "error")
        return render_template(template), 401
    assert account_id is not None
    return response if response is not None else complete(kind, account_id)


def _failed(db: Session, kind: str, account: Any | None, state: str, addr: str | None) -> None:
    svc = services()
    login_failed = Tag.CLIENT_LOGIN_FAILED if kind == "client" else Tag.OFFICE_LOGIN_FAILED
    if account is None:
        # The attempted login name is not recorded: it may be a mistyped password.
        throttle.record_failure(db, None, addr)
        record(db, svc.audit_key, login_failed, Actor("anonymous"), remote_addr=addr)
        return
    who, company = actor_of(kind, account), company_of(kind, account)
    if state != "ok":
        # Throttled or locked: refused without counting, so a patient owner
        # is not locked out by the wait itself.
        throttle.record_failure(db, None, addr)
        record(db, svc.audit_key, Tag.LOGIN_LOCKED_OUT, who, company_id=company,
               remote_addr=addr, details={"state": state})
        return
    if throttle.record_failure(db, account, addr) == "locked":
        record(db, svc.audit_key, Tag.ACCOUNT_LOCKED, who, company_id=company, remote_addr=addr)
    record(db, svc.audit_key, login_failed, who, company_id=company, remote_addr=addr,
           details={"active": bool(account.active), "failures": account.failed_logins})
