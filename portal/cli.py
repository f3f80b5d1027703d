"""The ``kinko`` command (../shared/contract.md).

Exit status 0 on success; non-zero with a one-line reason on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from . import accounts
from .audit import Actor, Tag, record, verify
from .models import ClientUser, Company, Purpose, Staff, Status, Upload
from .services import Services, build_services
from .settings import Settings


class CliError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"kinko: {self.message}", err=True)


def _settings() -> Settings:
    return Settings.from_env()


def _office() -> Services:
    return build_services(_settings(), "office")


def _cli_actor(staff: Staff | None = None) -> Actor:
    if staff is not None:
        return Actor("staff", staff.id, staff.login)
    return Actor("cli", None, os.environ.get("USER", "cli"))


class _Group(click.Group):
    """Unexpected errors end in one line on stderr, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("KINKO_DEBUG"):
                raise
            raise CliError(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                           if str(exc) else type(exc).__name__) from exc


@click.group(cls=_Group)
def main() -> None:
    """kinko — a secure My Number file-drop portal."""
    os.umask(0o077)  # keys, database and instance files are for this user only
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    # Library chatter ("Found credentials in environment variables") would
    # bury the one-line answers scripts read from stderr.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
def init() -> None:
    """Create KINKO_HOME, keys, a TLS certificate and the schema (idempotent)."""
    from .instance import init_instance
    settings = _settings()
    created = init_instance(settings)
    click.echo(f"kinko instance ready at {settings.home}"
               + (f" (created: {', '.join(created)})" if created else ""))


@main.command()
def serve() -> None:
    """Run client app, office app, worker (and clamd unless KINKO_CLAMD is set)."""
    from .instance import init_instance
    from .serve import serve as run
    settings = _settings()
    init_instance(settings)
    demo = settings.home / "demo-credentials.txt"
    sys.exit(run(settings, banner=demo.read_text() if demo.exists() else ""))


@main.command()
@click.option("--shared", is_flag=True,
              help="Other workers on this machine's queue may be mid-scan: leave their "
                   "leases alone at start.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
def worker(shared: bool, ready_fd: int | None) -> None:
    """Run only the pipeline worker."""
    from .worker import run_worker
    run_worker(_settings(), shared=shared, ready_fd=ready_fd)


@main.command()
def reconcile() -> None:
    """Repair leftovers of crashes once, and scan due uploads inline."""
    from .reconcile import reconcile as run
    report = run(build_services(_settings(), "worker"), scan_inline=True)
    click.echo(f"rescanned {len(report.rescanned)}, drop-zone leftovers "
               f"{len(report.dropzone_cleaned)}, orphans {len(report.orphans_deleted)}, "
               f"partials {report.partials_deleted}")


# -- accounts ----------------------------------------------------------------

@main.group()
def company() -> None:
    """Client companies."""


@company.command("add")
@click.argument("code")
@click.option("--name", required=True)
@click.option("--auto-pull/--no-auto-pull", default=False,
              help="Pull clean uploads into the vault automatically.")
@click.option("--require-2fa/--no-require-2fa", default=False,
              help="Every user of this company must use two-step verification.")
def company_add(code: str, name: str, auto_pull: bool, require_2fa: bool) -> None:
    svc = _office()
    with svc.sessions() as db, db.begin(), _account_errors(company=code):
        accounts.create_company(db, svc.audit_key, _cli_actor(), code, name,
                                auto_pull=auto_pull, require_2fa=require_2fa)
    click.echo(f"company {code} created")


@company.command("set")
@click.argument("code")
@click.option("--name")
@click.option("--auto-pull/--no-auto-pull", default=None,
              help="Pull clean uploads into the vault automatically.")
@click.option("--require-2fa/--no-require-2fa", default=None,
              help="Every user of this company must use two-step verification.")
def company_set(code: str, name: str | None, auto_pull: bool | None,
                require_2fa: bool | None) -> None:
    svc = _office()
    with svc.sessions() as db, db.begin(), _account_errors(company=code):
        c = accounts.company_by_code(db, code)
        changed = accounts.update_company(db, svc.audit_key, _cli_actor(), c, name=name,
                                          auto_pull=auto_pull, require_2fa=require_2fa)
    click.echo(f"company {code} updated: {', '.join(changed)}" if changed
               else f"company {code} unchanged")


_ACCOUNT_MESSAGES = {
    "bad_code": "company code must be ASCII letters, digits, - or _ (at most 32)",
    "bad_login": "login must be ASCII letters, digits, . _ @ or - (at most 64)",
    "bad_name": "name must be 1 to 200 characters",
    "bad_email": "not an e-mail address",
    "bad_role": "role must be manager or handler",
    "bad_company": "unknown company code",
    "bad_totp_secret": "--totp-secret must be base32",
    "bad_policy": "invalid password policy",
    "self": "you cannot do this to your own account",
}


@contextlib.contextmanager
def _account_errors(company: str = "", login: str = "", kind: str = "") -> Iterator[None]:
    """AccountError → one line on stderr, in the contract's words."""
    try:
        yield
    except accounts.AccountError as exc:
        if exc.code == "policy":
            msg = "password policy: " + ", ".join(exc.problems)
        elif exc.code == "duplicate":
            msg = (f"staff {login} already exists" if kind == "staff" else
                   f"user {login} already exists in {company}" if login else
                   f"company {company} already exists")
        elif exc.code == "not_found":
            msg = (f"no staff {login}" if kind == "staff" else
                   f"no user {login} in {company}" if login else f"no company {company}")
        else:
            msg = _ACCOUNT_MESSAGES.get(exc.code, exc.code)
        raise CliError(msg) from exc


def _company(db: Any, code: str) -> Company:
    c = db.execute(select(Company).where(Company.code == code)).scalar_one_or_none()
    if c is None:
        raise CliError(f"no company {code}")
    return c


@main.group()
def user() -> None:
    """Client users."""


@user.command("add")
@click.argument("code")
@click.argument("login")
@click.option("--password")
@click.option("--totp-secret")
@click.option("--name", "display_name", default="")
@click.option("--email")
def user_add(code: str, login: str, password: str | None, totp_secret: str | None,
             display_name: str, email: str | None) -> None:
    svc = _office()
    with svc.sessions() as db, db.begin():
        c = _company(db, code)
        with _account_errors(company=code, login=login):
            _u, pw = accounts.create_client_user(db, svc.audit_key, _cli_actor(), c.id, login,
                                                 display_name, email, password,
                                                 totp_secret=totp_secret)
    click.echo(f"user {login} created in {code}")
    if pw is not None:
        click.echo(f"initial password: {pw}")


@user.command("disable", help="Disable a client user and end their sessions.")
@click.argument("code")
@click.argument("login")
def user_disable(code: str, login: str) -> None:
    _account_action("client", code, login, "disable")


@user.command("enable", help="Enable a client user again.")
@click.argument("code")
@click.argument("login")
def user_enable(code: str, login: str) -> None:
    _account_action("client", code, login, "enable")


@user.command("unlock", help="Clear a client user's lockout and failure count.")
@click.argument("code")
@click.argument("login")
def user_unlock(code: str, login: str) -> None:
    _account_action("client", code, login, "unlock")


@user.command("reset-password", help="Print a new initial password for a client user.")
@click.argument("code")
@click.argument("login")
def user_reset_password(code: str, login: str) -> None:
    _account_action("client", code, login, "reset-password")


@user.command("reset-2fa", help="Remove a client user's two-step verification.")
@click.argument("code")
@click.argument("login")
def user_reset_2fa(code: str, login: str) -> None:
    _account_action("client", code, login, "reset-2fa")


def _account_action(kind: accounts.Kind, code: str, login: str, action: str) -> None:
    """disable | enable | unlock | reset-password | reset-2fa, for one account."""
    svc = _office()
    outbox: list[accounts.Notice] = []
    with svc.sessions() as db, db.begin():
        company = _company(db, code) if kind == "client" else None
        with _account_errors(company=code, login=login, kind=kind):
            output = _run_action(db, svc, kind, company, login, action, outbox)
    # Only once committed: a printed password must be one that works.
    click.echo(output)
    accounts.send_notices(svc.settings, outbox)


def _run_action(db: Any, svc: Services, kind: accounts.Kind, company: Company | None,
                login: str, action: str, outbox: list[accounts.Notice]) -> str:
    """Apply one action inside the caller's transaction; returns what to print."""
    account: Any
    if company is not None:
        account = accounts.client_user(db, company, login)
    else:
        account = accounts.staff_by_login(db, login)
    who = f"staff {login}" if kind == "staff" else f"user {login} in {company and company.code}"
    args = (db, svc.audit_key, _cli_actor(), kind, account)
    if action in ("disable", "enable"):
        changed = accounts.set_active(*args, action == "enable")
        return f"{who} {action}d" + ("" if changed else " (no change)")
    if action == "unlock":
        accounts.unlock(*args)
        return f"{who} unlocked"
    if action == "reset-password":
        password = accounts.reset_password(*args, outbox=outbox)
        return f"{who}: password reset\ninitial password: {password}"
    accounts.reset_totp(*args, outbox=outbox)
    return f"{who}: two-step verification reset"


@main.group()
def staff() -> None:
    """Office staff."""


@staff.command("add")
@click.argument("login")
@click.option("--role", type=click.Choice(["manager", "handler"]), required=True)
@click.option("--password")
@click.option("--totp-secret")
@click.option("--companies", default="", help="Comma-separated company codes (handlers).")
@click.option("--email")
@click.option("--name", "display_name", default="")
def staff_add(login: str, role: str, password: str | None, totp_secret: str | None,
              companies: str, email: str | None, display_name: str) -> None:
    svc = _office()
    # Without --totp-secret the person enrols their own authenticator at the
    # first sign-in (the secret is then never seen by anyone else).
    with svc.sessions() as db, db.begin():
        ids = [_company(db, c.strip()).id for c in companies.split(",") if c.strip()]
        with _account_errors(login=login, kind="staff"):
            _s, pw = accounts.create_staff(db, svc.audit_key, _cli_actor(), login, role,
                                           display_name, email, ids, password,
                                           totp_secret=totp_secret)
    click.echo(f"staff {login} created ({role})")
    if pw is not None:
        click.echo(f"initial password: {pw}")
    if not totp_secret:
        click.echo("two-step verification: set up at the first sign-in")


@staff.command("disable", help="Disable a staff account and end its sessions.")
@click.argument("login")
def staff_disable(login: str) -> None:
    _account_action("staff", "", login, "disable")


@staff.command("enable", help="Enable a staff account again.")
@click.argument("login")
def staff_enable(login: str) -> None:
    _account_action("staff", "", login, "enable")


@staff.command("unlock", help="Clear a staff account's lockout and failure count.")
@click.argument("login")
def staff_unlock(login: str) -> None:
    _account_action("staff", "", login, "unlock")


@staff.command("reset-password", help="Print a new initial password for a staff account.")
@click.argument("login")
def staff_reset_password(login: str) -> None:
    _account_action("staff", "", login, "reset-password")


@staff.command("reset-2fa", help="Remove a staff account's TOTP: they enrol again.")
@click.argument("login")
def staff_reset_2fa(login: str) -> None:
    _account_action("staff", "", login, "reset-2fa")


@main.group()
def token() -> None:
    """API tokens."""


@token.command("add")
@click.argument("code")
@click.argument("login")
@click.option("--label", default="")
def token_add(code: str, login: str, label: str) -> None:
    from .client.tokens import new_token
    from .models import ApiToken
    svc = _office()
    tok, digest = new_token()
    with svc.sessions() as db, db.begin():
        c = _company(db, code)
        u = db.execute(select(ClientUser).where(ClientUser.company_id == c.id,
                                                ClientUser.login == login)).scalar_one_or_none()
        if u is None:
            raise CliError(f"no user {login} in {code}")
        t = ApiToken(user_id=u.id, token_hash=digest, label=label)
        db.add(t)
        db.flush()
        record(db, svc.audit_key, Tag.TOKEN_CREATED, _cli_actor(), company_id=c.id,
               details={"token_id": t.id, "user_id": u.id})
    click.echo(tok)


# -- vault -------------------------------------------------------------------

def _staff(db: Any, login: str) -> Staff:
    s = db.execute(select(Staff).where(Staff.login == login)).scalar_one_or_none()
    if s is None or not s.active:
        raise CliError(f"no active staff {login}")
    return s


@main.group()
def vault() -> None:
    """Move files into the vault and read them back."""


@vault.command("pull")
@click.argument("upload_id", required=False)
@click.option("--staff", "staff_login", required=True)
@click.option("--all", "pull_all", is_flag=True, help="Every clean upload the staff may serve.")
def vault_pull(upload_id: str | None, staff_login: str, pull_all: bool) -> None:
    from .pipeline import PipelineError, pull_upload
    svc = _office()
    with svc.sessions() as db:
        s = _staff(db, staff_login)
        if pull_all:
            ids = [u.id for u in db.execute(select(Upload).where(
                Upload.status == Status.CLEAN)).scalars() if s.may_serve(u.company_id)]
        elif upload_id:
            u = db.get(Upload, upload_id)
            if u is None or not s.may_serve(u.company_id):
                raise CliError(f"no upload {upload_id}")
            ids = [upload_id]
        else:
            raise CliError("give an UPLOAD_ID or --all")
        actor = _cli_actor(s)
    for uid in ids:
        try:
            done = pull_upload(svc, uid, actor)
        except PipelineError as exc:
            raise CliError(f"{uid}: cannot pull ({exc.code})") from exc
        click.echo(f"{uid} {done.status}")


@vault.command("get")
@click.argument("upload_id")
@click.option("--staff", "staff_login", required=True)
@click.option("--purpose", required=True)
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path))
def vault_get(upload_id: str, staff_login: str, purpose: str, output: Path) -> None:
    from .pipeline import PipelineError, open_vaulted
    svc = _office()
    with svc.sessions() as db, db.begin():
        s = _staff(db, staff_login)
        u = db.get(Upload, upload_id)
        if u is None or not s.may_serve(u.company_id):
            raise CliError(f"no upload {upload_id}")
        p = db.get(Purpose, purpose)
        if p is None or not p.active:
            raise CliError(f"no purpose {purpose}")
        if u.status != Status.VAULTED:
            raise CliError(f"{upload_id} is not in the vault ({u.status})")
        record(db, svc.audit_key, Tag.FILE_DOWNLOADED, _cli_actor(s), company_id=u.company_id,
               upload_id=upload_id, details={"purpose": purpose, "via": "cli"})
    try:
        reader = open_vaulted(svc, u)
    except PipelineError as exc:
        raise CliError(exc.code) from exc
    # All or nothing: write beside the target and rename only after the
    # last segment authenticated, so a damaged object leaves no partial file.
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh, contextlib.closing(reader):
            for chunk in reader.iter_chunks(1 << 20):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"could not decrypt {upload_id}: {type(exc).__name__}") from exc
    click.echo(f"{upload_id} written to {output}")


@vault.command("verify")
@click.option("--staff", "staff_login", required=True)
def vault_verify(staff_login: str) -> None:
    """Decrypt every vaulted file in memory and check its SHA-256 (the restore drill)."""
    from .drill import verify_vault
    svc = _office()
    with svc.sessions() as db:
        actor = _cli_actor(_staff(db, staff_login))
    report = verify_vault(svc, actor)
    for upload_id, problem in report.failed:
        click.echo(f"{upload_id} FAILED: {problem}")
    if not report.ok:
        raise CliError(f"{len(report.failed)} of {report.checked} vaulted files failed")
    click.echo(f"{report.checked} vaulted files decrypt to their SHA-256")


# -- disposal ----------------------------------------------------------------
# The CLI is the office's local admin tool (it runs where KINKO_HOME and the
# vault private key are): it cannot ask for a TOTP code, so `approve` relies
# on access to this machine; the web console requires a fresh code.

_DISPOSAL_MESSAGES = {
    "not_found": "no such upload for this staff member",
    "not_vaulted": "the file is not in the vault",
    "already_proposed": "disposal was already proposed",
    "no_reason": "--reason is required",
    "reason_too_long": "--reason is too long (at most 1000 characters)",
    "reason_has_number": "--reason must not contain a personal number",
    "not_proposed": "disposal was not proposed yet",
    "same_person": "the proposer cannot approve: another manager must approve",
    "not_manager": "only a manager can approve disposal",
    "not_allowed": "only the proposer or a manager can withdraw",
}


@main.group()
def disposal() -> None:
    """Dispose of vaulted files: propose, approve (another manager), certificate.

    The CLI is the office's local admin tool and cannot ask for a TOTP code;
    the office console requires one to approve.
    """


def _disposal_error(upload_id: str, exc: Any) -> CliError:
    return CliError(f"{upload_id}: {_DISPOSAL_MESSAGES.get(exc.code, exc.code)} ({exc.code})")


@disposal.command("propose")
@click.argument("upload_id")
@click.option("--staff", "staff_login", required=True)
@click.option("--reason", required=True)
def disposal_propose(upload_id: str, staff_login: str, reason: str) -> None:
    from . import disposal as service
    svc = _office()
    try:
        with svc.sessions() as db, db.begin():
            s = _staff(db, staff_login)
            u = db.get(Upload, upload_id)
            if u is None:
                raise service.DisposalError("not_found")
            service.propose(db, svc, s, u, reason, actor=_cli_actor(s))
    except service.DisposalError as exc:
        raise _disposal_error(upload_id, exc) from exc
    click.echo(f"{upload_id} disposal proposed by {staff_login}")


@disposal.command("approve", help="Approve a proposed disposal (a manager other than the "
                  "proposer) and dispose of the file. No TOTP: local admin tool.")
@click.argument("upload_id")
@click.option("--staff", "staff_login", required=True)
def disposal_approve(upload_id: str, staff_login: str) -> None:
    from . import disposal as service
    svc = _office()
    with svc.sessions() as db:
        s = _staff(db, staff_login)
        actor = _cli_actor(s)
    try:
        done = service.approve(svc, upload_id, s, actor=actor)
    except service.DisposalError as exc:
        raise _disposal_error(upload_id, exc) from exc
    click.echo(f"{upload_id} disposed (certificate {done.id})")


@disposal.command("withdraw", help="Withdraw a disposal proposal (proposer or a manager).")
@click.argument("upload_id")
@click.option("--staff", "staff_login", required=True)
def disposal_withdraw(upload_id: str, staff_login: str) -> None:
    from . import disposal as service
    svc = _office()
    try:
        with svc.sessions() as db, db.begin():
            s = _staff(db, staff_login)
            u = db.get(Upload, upload_id)
            if u is None:
                raise service.DisposalError("not_found")
            service.withdraw(db, svc, s, u, actor=_cli_actor(s))
    except service.DisposalError as exc:
        raise _disposal_error(upload_id, exc) from exc
    click.echo(f"{upload_id} disposal proposal withdrawn")


@disposal.command("certificate", help="Write the disposal certificate (PDF) of a record "
                  "(certificate number) or of a disposed upload.")
@click.argument("record_or_upload_id")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path))
@click.option("--lang", type=click.Choice(["ja", "en"]), default="ja")
def disposal_certificate(record_or_upload_id: str, output: Path, lang: str) -> None:
    from .certificate import certificate_pdf
    from .disposal import record_for
    svc = _office()
    with svc.sessions() as db, db.begin():
        rec = record_for(db, record_or_upload_id)
        if rec is None:
            raise CliError(f"no disposal record {record_or_upload_id}")
        c = db.get(Company, rec.company_id)
        assert c is not None
        p = db.get(Purpose, rec.purpose_code)
        label = p.label(lang) if p else None
        record(db, svc.audit_key, Tag.CERTIFICATE_ISSUED, _cli_actor(), company_id=c.id,
               upload_id=rec.upload_id, details={"record_id": rec.id, "via": "cli"})
        pdf = certificate_pdf(rec, c, lang, purpose_label=label)
    output.write_bytes(pdf)
    click.echo(f"certificate {rec.id} written to {output}")


# -- ledger and monthly reports ----------------------------------------------

def _write_document(output: Path, body: bytes) -> None:
    """0600, written beside the target and renamed: no partial document."""
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@main.group()
def report() -> None:
    """The monthly usage report (利用記録レポート)."""


@report.command("monthly", help="Write a company's usage report of one month (JST): PDF, "
                "or CSV when PATH ends with .csv.")
@click.argument("code")
@click.argument("month")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path))
@click.option("--lang", type=click.Choice(["ja", "en"]), default="ja", show_default=True)
def report_monthly(code: str, month: str, output: Path, lang: str) -> None:
    from . import reports
    if not reports.is_month(month):
        raise CliError(f"{month}: the month must be YYYY-MM")
    fmt = "csv" if output.suffix.lower() == ".csv" else "pdf"
    svc = build_services(_settings(), "worker")  # no vault key needed
    with svc.sessions() as db, db.begin():
        c = _company(db, code)
        body = (reports.monthly_csv(db, c, month, lang=lang) if fmt == "csv"
                else reports.monthly_pdf(db, c, month, lang=lang))
        record(db, svc.audit_key, Tag.REPORT_GENERATED, _cli_actor(), company_id=c.id,
               details={"report": "monthly", "month": month, "format": fmt, "via": "cli"})
    _write_document(output, body)
    click.echo(f"usage report {code} {month} written to {output}")


@main.command("ledger", help="Write a company's handling ledger (特定個人情報管理台帳): PDF, "
              "or CSV when PATH ends with .csv.")
@click.argument("code")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path))
@click.option("--lang", type=click.Choice(["ja", "en"]), default="ja", show_default=True)
def ledger(code: str, output: Path, lang: str) -> None:
    from . import reports
    fmt = "csv" if output.suffix.lower() == ".csv" else "pdf"
    svc = build_services(_settings(), "worker")  # no vault key needed
    with svc.sessions() as db, db.begin():
        c = _company(db, code)
        body = (reports.ledger_csv(db, c, svc.settings, lang=lang) if fmt == "csv"
                else reports.ledger_pdf(db, c, svc.settings, lang=lang))
        record(db, svc.audit_key, Tag.REPORT_GENERATED, _cli_actor(), company_id=c.id,
               details={"report": "ledger", "format": fmt, "via": "cli"})
    _write_document(output, body)
    click.echo(f"ledger {code} written to {output}")


# -- audit -------------------------------------------------------------------

@main.group()
def audit() -> None:
    """The handling log."""


@audit.command("verify")
def audit_verify() -> None:
    svc = build_services(_settings(), "worker")
    with svc.sessions() as db:
        count, broken = verify(db, svc.audit_key)
    if broken:
        raise CliError(f"audit chain broken at event {broken.event_id}: {broken.problem} "
                       f"({count} events verified before it)")
    click.echo(f"audit chain intact: {count} events")


def _audit_time(value: str | None, *, end: bool = False) -> Any:
    from .auditexport import ExportError, parse_time
    if value is None:
        return None
    try:
        return parse_time(value, end=end)
    except ExportError as exc:
        raise CliError(str(exc)) from exc


@audit.command("export", help="Export the log as CSV (UTF-8 with BOM, formulas neutralised) "
               "or JSON lines (raw values, with the hash chain fields). T is an ISO date or "
               "date-time, JST unless it names a zone; a date in --to includes that day.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), required=True)
@click.option("--from", "since", metavar="T")
@click.option("--to", "until", metavar="T")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path))
def audit_export(fmt: str, since: str | None, until: str | None, output: Path) -> None:
    from . import auditexport as ax
    svc = build_services(_settings(), "worker")
    start, end = _audit_time(since), _audit_time(until, end=True)
    with svc.sessions() as db, db.begin():
        max_id = ax.last_id(db)
        stmt = ax.query_events(since=start, until=end, max_id=max_id)
        record(db, svc.audit_key, Tag.AUDIT_EXPORTED, _cli_actor(), details={
            "format": fmt, "via": "cli", "last_event_id": max_id,
            **ax.filters_for_audit({"from": ax.iso_utc(start) if start else "",
                                    "to": ax.iso_utc(end) if end else ""})})
    tmp = output.with_name(output.name + ".part")
    count = 0
    with svc.sessions() as db, tmp.open("wb") as fh:
        def counted() -> Iterator[Any]:
            nonlocal count
            for ev in ax.iter_events(db, stmt):
                count += 1
                yield ev
        (ax.write_csv if fmt == "csv" else ax.write_jsonl)(counted(), fh)
    tmp.replace(output)
    click.echo(f"{count} events written to {output}")


@audit.command("incident", help="Write an incident export into DIR: events.csv, "
               "events.jsonl, touched.csv, touched.json (files by upload id, companies, "
               "people) and summary.txt. T as for `kinko audit export`.")
@click.option("--from", "since", metavar="T", required=True)
@click.option("--to", "until", metavar="T", required=True)
@click.option("--actor", help="login ID, or kind:id (staff:3)")
@click.option("--company", "company_code", metavar="CODE")
@click.option("--addr", metavar="IP")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path))
def audit_incident(since: str, until: str, actor: str | None, company_code: str | None,
                   addr: str | None, output: Path) -> None:
    from . import auditexport as ax
    svc = build_services(_settings(), "worker")
    start, end = _audit_time(since), _audit_time(until, end=True)
    with svc.sessions() as db:
        company_id = _company(db, company_code).id if company_code else None
        try:
            inc = ax.incident(db, start, end, actor=actor, company_id=company_id, addr=addr)
        except ax.ExportError as exc:
            raise CliError(str(exc)) from exc
    with svc.sessions() as db, db.begin():
        record(db, svc.audit_key, Tag.INCIDENT_EXPORTED, _cli_actor(),
               details={"via": "cli", "events": inc.total, "uploads": len(inc.uploads),
                        "companies": len(inc.companies), "last_event_id": inc.max_id,
                        **ax.filters_for_audit({"actor": actor or "", "addr": addr or "",
                                                "company": company_code or "",
                                                "from": ax.iso_utc(start),
                                                "to": ax.iso_utc(end)})})
    with svc.sessions() as db:
        import dataclasses
        ax.write_incident(dataclasses.replace(inc, db=db), output)
    click.echo(f"incident: {inc.total} events, {len(inc.uploads)} files, "
               f"{len(inc.companies)} companies written to {output}")


# -- notices -----------------------------------------------------------------

@main.group()
def notices() -> None:
    """E-mail notices about uploads (the worker sends them every minute)."""


@notices.command("run", help="Send the notices that are due now, once.")
def notices_run() -> None:
    from .notices import run_notices
    sent = run_notices(build_services(_settings(), "worker"))
    click.echo(f"notices sent: {sent}")


@main.command()
def demo() -> None:
    """Create a demo company, client user and office manager (first run only)."""
    from .demo import ensure_demo
    click.echo(ensure_demo(_office()))


from .keycli import keys as _keys  # noqa: E402 - `kinko keys` lives in its own module

main.add_command(_keys)


if __name__ == "__main__":
    main()
