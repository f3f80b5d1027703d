"""Account administration for the office manager (事務取扱責任者).

Companies, their client users, office staff and the password policy.  Every
page is manager-only (:func:`manager_required`: anyone else gets the generic
403 page, and the refusal is audited); every change is a CSRF-protected POST
that calls :mod:`portal.accounts`, which validates, changes and audits in one
transaction.  An initial password is rendered once, on the response to the
POST that created it (``Cache-Control: no-store`` like every page), and is
never stored or shown again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import accounts
from ..audit import Actor, Tag, record
from ..auth import throttle
from ..auth.policy import PasswordPolicy, load_policy
from ..models import ClientUser, Company, Staff
from ..unlock import opening_enabled, save_opening_enabled
from ..web.base import remote_addr, services

ERRORS = {
    "bad_code": _l("The company code may use only letters, digits, “-” and “_” "
                   "(up to 32 characters)."),
    "bad_login": _l("The login ID may use only letters, digits, “.”, “_”, “@” and “-” "
                    "(up to 64 characters)."),
    "bad_name": _l("Please enter a name of up to 200 characters."),
    "bad_email": _l("Please enter a valid e-mail address."),
    "bad_role": _l("Please choose a role."),
    "bad_company": _l("An unknown company was chosen."),
    "bad_policy": _l("The policy values are out of range: the minimum length must be at "
                     "least 8 and not more than the maximum length (up to 1024), expiry "
                     "0 to 3650 days, history 0 to 50."),
    "duplicate": _l("This code or login ID is already in use."),
    "not_found": _l("Not found."),
    "policy": _l("The password does not meet the password policy."),
    "self": _l("You cannot disable your own account."),
}
ACTIONS = ("reset-password", "reset-2fa", "disable", "enable", "unlock")
SUCCESS = {
    "reset-2fa": _l("Two-step verification was reset. All sessions of the account were "
                    "ended."),
    "disable": _l("The account was disabled. All its sessions were ended."),
    "enable": _l("The account was enabled."),
    "unlock": _l("The account was unlocked."),
}


def manager_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only a manager passes; anyone else gets the generic 403 page (audited)."""
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(current_user, "role", None) != "manager":
            svc = services()
            with svc.sessions() as db, db.begin():
                record(db, svc.audit_key, Tag.ACCESS_DENIED, actor(),
                       remote_addr=remote_addr(),
                       details={"why": "not_manager", "endpoint": request.endpoint or ""})
            abort(403)
        return view(*args, **kwargs)
    return wrapper


def actor() -> Actor:
    return Actor("staff", current_user.id, current_user.login)


def error_text(exc: accounts.AccountError) -> str:
    return str(ERRORS.get(exc.code, ERRORS["not_found"]))


def _id(value: str) -> int:
    if not value.isdigit() or len(value) > 12:
        abort(404)
    return int(value)


def _checked(name: str) -> bool:
    return request.form.get(name) in ("1", "on", "true", "yes")


def _company_ids() -> list[int]:
    return [int(v) for v in request.form.getlist("companies") if v.isdigit() and len(v) < 12]


def _company_or_404(db: Session, code: str) -> Company:
    try:
        return accounts.company_by_code(db, code)
    except accounts.AccountError:
        abort(404)


def _all_companies(db: Session) -> list[Company]:
    return list(db.execute(select(Company).order_by(Company.code)).scalars())


def _lock_state(account: Any) -> str:
    return throttle.account_state(account)


def init(app: Flask) -> None:
    app.add_template_global(_lock_state, "lock_state")

    @app.route("/admin/companies", methods=["GET", "POST"])
    @manager_required
    def admin_companies() -> Any:
        svc = services()
        if request.method == "POST":
            code = request.form.get("code", "")[:64]
            try:
                with svc.sessions() as db, db.begin():
                    accounts.create_company(
                        db, svc.audit_key, actor(), code, request.form.get("name", "")[:300],
                        auto_pull=_checked("auto_pull"), require_2fa=_checked("require_2fa"),
                        remote_addr=remote_addr())
            except accounts.AccountError as exc:
                flash(error_text(exc), "error")
                return _companies_page(status=400)
            flash(_("The company was created."), "success")
            return redirect(url_for("admin_company", code=code.strip()), 303)
        return _companies_page()

    def _companies_page(status: int = 200) -> Any:
        svc = services()
        with svc.sessions() as db:
            rows = _all_companies(db)
            counts = {c.id: len(c.users) for c in rows}
        return render_template("office/admin/companies.html", companies=rows,
                               counts=counts, form=request.form), status

    @app.route("/admin/companies/<code>", methods=["GET", "POST"])
    @manager_required
    def admin_company(code: str) -> Any:
        svc = services()
        status = 200
        if request.method == "POST":
            try:
                with svc.sessions() as db, db.begin():
                    company = _company_or_404(db, code)
                    changed = accounts.update_company(
                        db, svc.audit_key, actor(), company,
                        name=request.form.get("name", "")[:300],
                        auto_pull=_checked("auto_pull"), require_2fa=_checked("require_2fa"),
                        remote_addr=remote_addr())
                flash(_("The company settings were saved.") if changed
                      else _("Nothing was changed."), "success")
                return redirect(url_for("admin_company", code=code), 303)
            except accounts.AccountError as exc:
                flash(error_text(exc), "error")
                status = 400
        return _company_page(code, status)

    def _company_page(code: str, status: int = 200, form: Any = None) -> Any:
        svc = services()
        with svc.sessions() as db:
            company = _company_or_404(db, code)
            users = list(db.execute(select(ClientUser).where(
                ClientUser.company_id == company.id).order_by(ClientUser.login)).scalars())
        return render_template("office/admin/company.html", company=company, users=users,
                               form=form or {}), status

    @app.route("/admin/companies/<code>/users", methods=["POST"])
    @manager_required
    def admin_create_user(code: str) -> Any:
        svc = services()
        f = request.form
        try:
            with svc.sessions() as db, db.begin():
                company = _company_or_404(db, code)
                user, password = accounts.create_client_user(
                    db, svc.audit_key, actor(), company.id, f.get("login", "")[:64],
                    f.get("display_name", "")[:300], f.get("email", "")[:300],
                    remote_addr=remote_addr())
                login, company_name = user.login, company.name
        except accounts.AccountError as exc:
            flash(error_text(exc), "error")
            return _company_page(code, 400, form=f)
        return render_template(
            "office/admin/initial_password.html", password=password, login=login,
            company_code=code, company_name=company_name, created=True,
            back=url_for("admin_company", code=code))

    @app.route("/admin/companies/<code>/users/<user_id>/<action>", methods=["POST"])
    @manager_required
    def admin_user_action(code: str, user_id: str, action: str) -> Any:
        if action not in ACTIONS:
            abort(404)
        svc = services()
        outbox: list[accounts.Notice] = []
        try:
            with svc.sessions() as db, db.begin():
                company = _company_or_404(db, code)
                try:
                    user = accounts.client_user(db, company, _id(user_id))
                except accounts.AccountError:
                    abort(404)
                password = _apply(db, action, "client", user, outbox)
                login, company_name = user.login, company.name
        except accounts.AccountError as exc:
            flash(error_text(exc), "error")
            return redirect(url_for("admin_company", code=code), 303)
        accounts.send_notices(svc.settings, outbox)
        if password is not None:
            return render_template(
                "office/admin/initial_password.html", password=password, login=login,
                company_code=code, company_name=company_name, created=False,
                back=url_for("admin_company", code=code))
        flash(str(SUCCESS[action]), "success")
        return redirect(url_for("admin_company", code=code), 303)

    @app.route("/admin/staff", methods=["GET", "POST"])
    @manager_required
    def admin_staff() -> Any:
        svc = services()
        if request.method == "POST":
            f = request.form
            try:
                with svc.sessions() as db, db.begin():
                    staff, password = accounts.create_staff(
                        db, svc.audit_key, actor(), f.get("login", "")[:64],
                        f.get("role", ""), f.get("display_name", "")[:300],
                        f.get("email", "")[:300], _company_ids(), remote_addr=remote_addr())
                    login = staff.login
            except accounts.AccountError as exc:
                flash(error_text(exc), "error")
                return _staff_page(400)
            return render_template(
                "office/admin/initial_password.html", password=password, login=login,
                company_code=None, company_name=None, created=True,
                back=url_for("admin_staff"))
        return _staff_page()

    def _staff_page(status: int = 200) -> Any:
        svc = services()
        with svc.sessions() as db:
            people = list(db.execute(select(Staff).order_by(Staff.login)).scalars())
            assigned = {s.id: {c.id for c in s.companies} for s in people}
            companies = _all_companies(db)
        return render_template("office/admin/staff.html", people=people, assigned=assigned,
                               companies=companies, form=request.form), status

    @app.route("/admin/staff/<staff_id>/<action>", methods=["POST"])
    @manager_required
    def admin_staff_action(staff_id: str, action: str) -> Any:
        if action not in (*ACTIONS, "companies"):
            abort(404)
        svc = services()
        outbox: list[accounts.Notice] = []
        try:
            with svc.sessions() as db, db.begin():
                staff = db.get(Staff, _id(staff_id))
                if staff is None:
                    abort(404)
                if action == "companies":
                    changed = accounts.set_staff_companies(
                        db, svc.audit_key, actor(), staff, _company_ids(),
                        remote_addr=remote_addr())
                    password = None
                else:
                    password = _apply(db, action, "staff", staff, outbox)
                login = staff.login
        except accounts.AccountError as exc:
            flash(error_text(exc), "error")
            return redirect(url_for("admin_staff"), 303)
        accounts.send_notices(svc.settings, outbox)
        if password is not None:
            return render_template(
                "office/admin/initial_password.html", password=password, login=login,
                company_code=None, company_name=None, created=False,
                back=url_for("admin_staff"))
        if action == "companies":
            flash(_("The assigned companies were saved.") if changed
                  else _("Nothing was changed."), "success")
        else:
            flash(str(SUCCESS[action]), "success")
        return redirect(url_for("admin_staff"), 303)

    @app.route("/admin/policy", methods=["GET", "POST"])
    @manager_required
    def admin_policy() -> Any:
        svc = services()
        if request.method == "POST":
            try:
                policy = _policy_from_form()
                with svc.sessions() as db, db.begin():
                    changed = accounts.set_password_policy(db, svc.audit_key, actor(), policy,
                                                           remote_addr=remote_addr())
            except accounts.AccountError as exc:
                flash(error_text(exc), "error")
                with svc.sessions() as db:
                    return render_template("office/admin/policy.html",
                                           policy=load_policy(db),
                                           opening=opening_enabled(db)), 400
            flash(_("The password policy was saved.") if changed
                  else _("Nothing was changed."), "success")
            return redirect(url_for("admin_policy"), 303)
        with svc.sessions() as db:
            policy = load_policy(db)
            opening = opening_enabled(db)
        return render_template("office/admin/policy.html", policy=policy, opening=opening)

    @app.route("/admin/policy/password-opening", methods=["POST"])
    @manager_required
    def admin_password_opening() -> Any:
        """The office setting: may clients type a protected file's password? (audited)"""
        svc = services()
        enabled = _checked("enabled")
        with svc.sessions() as db, db.begin():
            changed = save_opening_enabled(db, enabled)
            if changed:
                record(db, svc.audit_key, Tag.POLICY_CHANGED, actor(),
                       remote_addr=remote_addr(),
                       details={"policy": "password_opening", "old": {"enabled": not enabled},
                                "new": {"enabled": enabled}, "changed": ["enabled"]})
        flash(_("The setting was saved.") if changed else _("Nothing was changed."), "success")
        return redirect(url_for("admin_policy"), 303)


def _apply(db: Session, action: str, kind: accounts.Kind, account: Any,
           outbox: list[accounts.Notice]) -> str | None:
    """Run one account action; returns the new initial password for a reset."""
    svc = services()
    args = (db, svc.audit_key, actor(), kind, account)
    if action == "reset-password":
        return accounts.reset_password(*args, outbox=outbox, remote_addr=remote_addr())
    if action == "reset-2fa":
        accounts.reset_totp(*args, outbox=outbox, remote_addr=remote_addr())
    elif action == "unlock":
        accounts.unlock(*args, remote_addr=remote_addr())
    else:
        accounts.set_active(*args, action == "enable", remote_addr=remote_addr())
    return None


def _policy_from_form() -> PasswordPolicy:
    f = request.form

    def number(name: str) -> int:
        raw = f.get(name, "").strip()
        if not raw.isdigit() or len(raw) > 5:
            raise accounts.AccountError("bad_policy")
        return int(raw)

    return PasswordPolicy(
        min_length=number("min_length"), max_length=number("max_length"),
        letters_and_digits=_checked("letters_and_digits"),
        expiry_days=number("expiry_days"), history=number("history"),
        refuse_common=_checked("refuse_common"))
