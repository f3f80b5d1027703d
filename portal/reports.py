"""The handling ledger (特定個人情報管理台帳) and the monthly usage report (利用記録レポート).

Both are printed from the database on demand, as CSV or PDF, and never
stored: the same rows give the same document, so nothing personal is kept
twice.  A :class:`~portal.models.MonthlyReport` row only records that a
company's month was closed and its client users were told.

* **Ledger**, per company: the kinds of file held × purpose of use, how many
  are in the vault, who is responsible (the office managers), who has access
  (managers and the handlers assigned to the company), where the files are
  stored (backend and bucket, never an object key), retention dates and
  disposal status.  No file name, no number.
* **Monthly report**, per company and Japan-time month: what was received
  (upload id, file name with any My-Number-shaped run masked, purpose,
  time), who used which file for which purpose (every
  ``office:file:downloaded`` event) and what was disposed (disposal
  records): exactly that month's events of that company.

Closing a month (:func:`close_month`, on demand in the office console or by
the worker's ``kinko.monthly_reports`` task through :func:`run_monthly`)
sends the client users a notice that names the company and the month only,
checked by :func:`portal.notices.check_notice` like every other notice.

No Flask here: the office app, the client app, the worker and the CLI all
call these functions.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import notify
from .audit import SYSTEM, Actor, Tag, record
from .certificate import JST, N_, _translations, font_name, format_when
from .models import (
    AuditEvent,
    ClientUser,
    Company,
    DisposalRecord,
    MonthlyReport,
    Purpose,
    Staff,
    Status,
    Upload,
)
from .models.base import aware_utc
from .notices import (
    AUTOMATIC,
    NO_PERSONAL_DATA,
    FileFacts,
    NoticeRefused,
    check_notice,
    client_url,
    recipient_lang,
)
from .notices import _translations as _notice_translations
from .pii import mask_mynumbers
from .services import Services
from .settings import Settings

log = logging.getLogger(__name__)

NOTICE_LANG = "ja"  # client users read Japanese first (domain.md)
MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")

# The documents' formal names, as the handling regulation calls them: shown
# in Japanese in every language (English adds a translation beside them).
LEDGER_NAME = "特定個人情報管理台帳"
MONTHLY_NAME = "利用記録レポート"

LEDGER_TITLE_EN = N_("Handling ledger")
MONTHLY_TITLE_EN = N_("Monthly usage report")

# Column headings and fixed wording (the catalogue gives the Japanese).
H_KIND = N_("Type of file")
H_PURPOSE = N_("Purpose of use")
H_HELD = N_("Files in the vault")
H_RESPONSIBLE = N_("Responsible person")
H_ACCESS = N_("Who has access")
H_STORED = N_("Where stored")
H_RETENTION_FROM = N_("Earliest retention date")
H_RETENTION_TO = N_("Latest retention date")
H_RETENTION = N_("Retention dates")
H_DISPOSED = N_("Disposed")
H_DUE = N_("Due for disposal")
H_SECTION = N_("Section")
H_TIME = N_("Date and time")
H_UPLOAD = N_("Upload ID")
H_FILE = N_("File name")
H_PERSON = N_("Person")
H_APPROVED = N_("Disposal approved by")
H_COMPANY = N_("Company")
H_MONTH = N_("Month")
S_RECEIVED = N_("Received")
S_USED = N_("Used")
S_DISPOSED = N_("Disposed of")
S_RECEIVED_LONG = N_("Files received")
S_USED_LONG = N_("Files used by the office (who, which file, for which purpose)")
S_DISPOSED_LONG = N_("Files disposed of")
NONE_THIS_MONTH = N_("None in this month.")
NO_FILES_HELD = N_("No files are held for this company.")
GENERATED_AT = N_("Generated at %(when)s")
SUMMARY = N_("Received: %(received)d, used: %(used)d, disposed of: %(disposed)d")
LEDGER_NOTE = N_("This ledger holds no personal numbers and no file names. Storage is "
                 "named by its backend and bucket only.")
MONTHLY_NOTE = N_("File names are shown with any run of digits shaped like a personal "
                  "number masked. Times are Japan time.")
STORED_LOCAL = N_("Vault: a local directory on the office server")
STORED_S3 = N_("Vault: S3 bucket %(bucket)s")
STORED_OTHER = N_("Vault: %(backend)s")
UNKNOWN_KIND = N_("Unknown")
NOBODY = N_("Nobody")
COUNT_DUE = N_("%(disposed)d disposed of, %(due)d due")
NOTICE_SUBJECT = N_("[kinko] Your usage report for %(month)s is ready")
NOTICE_READY = N_("The usage report of %(company)s for %(month)s is ready.")
NOTICE_OPEN = N_("Please sign in to your room to view and download it: %(url)s")


class ReportError(Exception):
    """A report cannot be made: ``code`` is ``bad_month`` or ``future_month``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# -- months ---------------------------------------------------------------------


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` → (year, month); ReportError("bad_month") otherwise."""
    m = MONTH.fullmatch(text or "")
    if m is None or not 2000 <= int(m.group(1)) <= 2200:
        raise ReportError("bad_month")
    return int(m.group(1)), int(m.group(2))


def is_month(text: str) -> bool:
    try:
        parse_month(text)
    except ReportError:
        return False
    return True


def _next(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The JST month as [start, end) in naive UTC, the way the database stores times."""
    year, mon = parse_month(month)
    start = datetime.combine(date(year, mon, 1), time(), JST)
    end = datetime.combine(date(*_next(year, mon), 1), time(), JST)
    return (start.astimezone(UTC).replace(tzinfo=None),
            end.astimezone(UTC).replace(tzinfo=None))


def current_month(now: datetime | None = None) -> str:
    local = aware_utc(now or datetime.now(UTC)).astimezone(JST)
    return f"{local.year:04d}-{local.month:02d}"


def previous_month(now: datetime | None = None) -> str:
    """The JST month before the one ``now`` falls in: the last month that has ended."""
    local = aware_utc(now or datetime.now(UTC)).astimezone(JST)
    year, mon = (local.year - 1, 12) if local.month == 1 else (local.year, local.month - 1)
    return f"{year:04d}-{mon:02d}"


def month_label(month: str, lang: str = "ja") -> str:
    year, mon = parse_month(month)
    return f"{year}年{mon}月" if lang == "ja" else f"{year}-{mon:02d}"


def _iso_jst(at: datetime) -> str:
    return aware_utc(at).astimezone(JST).isoformat(timespec="seconds")


def _people(staff: Iterable[Staff], lang: str) -> str:
    names = sorted({s.display_name or s.login for s in staff})
    return ("、" if lang == "ja" else ", ").join(names)


def _staff_name(staff: Staff | None, fallback: str) -> str:
    if staff is None:
        return fallback
    return staff.display_name or staff.login


# -- the ledger -----------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRow:
    kind: str
    purpose_code: str
    purpose: str
    held: int
    responsible: str
    access: str
    stored: str
    retention_from: date | None
    retention_to: date | None
    disposed: int
    due: int


def where_stored(settings: Settings, lang: str = "ja") -> str:
    """Backend and bucket of the vault, from its URL: never a path prefix or object key."""
    tr = _translations(lang)
    url = urlsplit(settings.vault_url)
    if url.scheme == "file":
        return tr.gettext(STORED_LOCAL)
    if url.scheme == "s3":
        return tr.gettext(STORED_S3) % {"bucket": url.hostname or url.netloc}
    return tr.gettext(STORED_OTHER) % {"backend": url.scheme or "?"}


def _access(db: Session, company_id: int) -> tuple[list[Staff], list[Staff]]:
    """(managers, everyone with access): active managers and the assigned handlers."""
    staff = list(db.execute(select(Staff).where(Staff.active.is_(True))).scalars())
    managers = [s for s in staff if s.is_manager]
    return managers, [s for s in staff if s.may_serve(company_id)]


def ledger_rows(db: Session, company: Company, settings: Settings, lang: str = "ja",
                today: date | None = None) -> list[LedgerRow]:
    """One row per kind of file × purpose of use, over the files kept or disposed of."""
    tr = _translations(lang)
    today = today or datetime.now(JST).date()
    purposes = {p.code: p for p in db.execute(select(Purpose)).scalars()}
    managers, access = _access(db, company.id)
    responsible = _people(managers, lang) or tr.gettext(NOBODY)
    who = _people(access, lang) or tr.gettext(NOBODY)
    stored = where_stored(settings, lang)
    uploads = db.execute(
        select(Upload.kind, Upload.sniffed, Upload.purpose_code, Upload.status,
               Upload.retention_until)
        .where(Upload.company_id == company.id,
               Upload.status.in_([Status.VAULTED, Status.DISPOSED]))).all()
    groups: dict[tuple[str, str], list[Any]] = {}
    for u in uploads:
        kind = u.kind or (u.sniffed if u.sniffed and u.sniffed != "unknown" else "")
        groups.setdefault((kind, u.purpose_code), []).append(u)
    rows = []
    for (kind, code), items in sorted(groups.items()):
        held = [u for u in items if u.status == Status.VAULTED]
        dates = sorted(u.retention_until for u in held if u.retention_until is not None)
        purpose = purposes.get(code)
        rows.append(LedgerRow(
            kind=kind or tr.gettext(UNKNOWN_KIND), purpose_code=code,
            purpose=purpose.label(lang) if purpose else code, held=len(held),
            responsible=responsible, access=who, stored=stored,
            retention_from=dates[0] if dates else None,
            retention_to=dates[-1] if dates else None,
            disposed=sum(1 for u in items if u.status == Status.DISPOSED),
            due=sum(1 for d in dates if d < today)))
    return rows


def _ledger_header(lang: str) -> list[str]:
    tr = _translations(lang)
    return [tr.gettext(h) for h in (H_KIND, H_PURPOSE, H_HELD, H_RESPONSIBLE, H_ACCESS,
                                    H_STORED, H_RETENTION_FROM, H_RETENTION_TO, H_DISPOSED,
                                    H_DUE)]


def _day(d: date | None) -> str:
    return d.isoformat() if d else ""


def ledger_csv(db: Session, company: Company, settings: Settings, lang: str = "ja",
               today: date | None = None) -> bytes:
    rows = ledger_rows(db, company, settings, lang, today)
    return _csv([_ledger_header(lang)] + [
        [r.kind, r.purpose, str(r.held), r.responsible, r.access, r.stored,
         _day(r.retention_from), _day(r.retention_to), str(r.disposed), str(r.due)]
        for r in rows])


def ledger_pdf(db: Session, company: Company, settings: Settings, lang: str = "ja",
               now: datetime | None = None) -> bytes:
    tr = _translations(lang)
    _ = tr.gettext
    now = now or datetime.now(UTC)
    rows = ledger_rows(db, company, settings, lang, aware_utc(now).astimezone(JST).date())
    header = [_(h) for h in (H_KIND, H_PURPOSE, H_HELD, H_RESPONSIBLE, H_ACCESS, H_STORED,
                             H_RETENTION, H_DISPOSED)]
    body = [[r.kind, r.purpose, str(r.held), r.responsible, r.access, r.stored,
             f"{_day(r.retention_from)} – {_day(r.retention_to)}" if r.retention_from else "—",
             _(COUNT_DUE) % {"disposed": r.disposed, "due": r.due}] for r in rows]
    pdf = _Pdf(lang, _title(LEDGER_NAME, LEDGER_TITLE_EN, lang), company)
    pdf.facts([(_(H_COMPANY), f"{company.name} ({company.code})")])
    pdf.table(header, body, widths=[18, 38, 18, 40, 48, 40, 40, 25], empty=_(NO_FILES_HELD))
    pdf.note(_(LEDGER_NOTE))
    pdf.note(_(GENERATED_AT) % {"when": format_when(now, lang)})
    return pdf.build()


# -- the monthly report ---------------------------------------------------------


@dataclass(frozen=True)
class Received:
    at: datetime
    upload_id: str
    filename: str
    purpose: str


@dataclass(frozen=True)
class Used:
    at: datetime
    person: str
    upload_id: str
    filename: str
    purpose: str


@dataclass(frozen=True)
class Disposed:
    at: datetime
    upload_id: str
    kind: str
    purpose: str
    approved_by: str


@dataclass(frozen=True)
class Activity:
    company: Company
    month: str
    received: list[Received]
    used: list[Used]
    disposed: list[Disposed]


def monthly_activity(db: Session, company: Company, month: str,
                     lang: str = "ja") -> Activity:
    """Exactly what happened to ``company``'s files in the JST ``month``."""
    start, end = month_bounds(month)
    purposes = {p.code: p for p in db.execute(select(Purpose)).scalars()}

    def label(code: str | None) -> str:
        p = purposes.get(code or "")
        return p.label(lang) if p else (code or "")

    uploads = list(db.execute(
        select(Upload).where(Upload.company_id == company.id, Upload.created_at >= start,
                             Upload.created_at < end)
        .order_by(Upload.created_at, Upload.id)).scalars())
    received = [Received(u.created_at, u.id, mask_mynumbers(u.filename),
                         label(u.purpose_code)) for u in uploads]

    events = list(db.execute(
        select(AuditEvent).where(AuditEvent.company_id == company.id,
                                 AuditEvent.action == str(Tag.FILE_DOWNLOADED),
                                 AuditEvent.at >= start, AuditEvent.at < end)
        .order_by(AuditEvent.at, AuditEvent.id)).scalars())
    ids = {e.upload_id for e in events if e.upload_id}
    names: dict[str, str] = {}
    if ids:
        for uid, filename in db.execute(select(Upload.id, Upload.filename).where(
                Upload.id.in_(ids), Upload.company_id == company.id)):
            names[uid] = filename
    staff_ids = {e.actor_id for e in events if e.actor_kind == "staff" and e.actor_id}
    staff = {s.id: s for s in db.execute(select(Staff).where(Staff.id.in_(staff_ids)))
             .scalars()} if staff_ids else {}
    used = []
    for e in events:
        try:
            details = json.loads(e.details or "{}")
        except ValueError:
            details = {}
        person = (_staff_name(staff.get(e.actor_id), e.actor_label)
                  if e.actor_kind == "staff" and e.actor_id else e.actor_label)
        used.append(Used(e.at, person, e.upload_id or "",
                         mask_mynumbers(names.get(e.upload_id or "", "")),
                         label(str(details.get("purpose") or ""))))

    records = db.execute(
        select(DisposalRecord).where(DisposalRecord.company_id == company.id,
                                     DisposalRecord.approved_at >= start,
                                     DisposalRecord.approved_at < end)
        .order_by(DisposalRecord.approved_at, DisposalRecord.id)).scalars()
    disposed = [Disposed(r.approved_at, r.upload_id, r.kind or "", label(r.purpose_code),
                         r.approved_by) for r in records]
    return Activity(company, month, received, used, disposed)


def _monthly_header(lang: str) -> list[str]:
    tr = _translations(lang)
    return [tr.gettext(h) for h in (H_SECTION, H_TIME, H_UPLOAD, H_FILE, H_PURPOSE,
                                    H_PERSON, H_KIND)]


def monthly_csv(db: Session, company: Company, month: str, lang: str = "ja") -> bytes:
    """One table: section, time (ISO 8601, JST), upload id, file name, purpose,
    person (who used it / who approved the disposal), type of file."""
    tr = _translations(lang)
    act = monthly_activity(db, company, month, lang)
    rows = [_monthly_header(lang)]
    rows += [[tr.gettext(S_RECEIVED), _iso_jst(r.at), r.upload_id, r.filename, r.purpose,
              "", ""] for r in act.received]
    rows += [[tr.gettext(S_USED), _iso_jst(u.at), u.upload_id, u.filename, u.purpose,
              u.person, ""] for u in act.used]
    rows += [[tr.gettext(S_DISPOSED), _iso_jst(d.at), d.upload_id, "", d.purpose,
              d.approved_by, d.kind] for d in act.disposed]
    return _csv(rows)


def monthly_pdf(db: Session, company: Company, month: str, lang: str = "ja",
                now: datetime | None = None) -> bytes:
    tr = _translations(lang)
    _ = tr.gettext
    act = monthly_activity(db, company, month, lang)
    pdf = _Pdf(lang, _title(MONTHLY_NAME, MONTHLY_TITLE_EN, lang), company)
    pdf.facts([(_(H_COMPANY), f"{company.name} ({company.code})"),
               (_(H_MONTH), month_label(month, lang))])
    pdf.note(_(SUMMARY) % {"received": len(act.received), "used": len(act.used),
                           "disposed": len(act.disposed)})

    def when(at: datetime) -> str:
        return format_when(at, lang)

    pdf.heading(_(S_RECEIVED_LONG))
    pdf.table([_(H_TIME), _(H_UPLOAD), _(H_FILE), _(H_PURPOSE)],
              [[when(r.at), r.upload_id, r.filename, r.purpose] for r in act.received],
              widths=[40, 70, 100, 57], empty=_(NONE_THIS_MONTH))
    pdf.heading(_(S_USED_LONG))
    pdf.table([_(H_TIME), _(H_PERSON), _(H_UPLOAD), _(H_FILE), _(H_PURPOSE)],
              [[when(u.at), u.person, u.upload_id, u.filename, u.purpose] for u in act.used],
              widths=[40, 35, 70, 70, 52], empty=_(NONE_THIS_MONTH))
    pdf.heading(_(S_DISPOSED_LONG))
    pdf.table([_(H_TIME), _(H_UPLOAD), _(H_KIND), _(H_PURPOSE), _(H_APPROVED)],
              [[when(d.at), d.upload_id, d.kind or "—", d.purpose, d.approved_by]
               for d in act.disposed],
              widths=[40, 70, 25, 62, 70], empty=_(NONE_THIS_MONTH))
    pdf.note(_(MONTHLY_NOTE))
    pdf.note(_(GENERATED_AT) % {"when": format_when(now or datetime.now(UTC), lang)})
    return pdf.build()


# -- output helpers ---------------------------------------------------------------


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would read as a formula is prefixed with ``'``."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _csv(rows: Sequence[Sequence[str]]) -> bytes:
    """UTF-8 with a BOM (so that Excel reads Japanese), CRLF, cells neutralised."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in rows:
        writer.writerow([neutralise(str(c)) for c in row])
    return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")


def _title(name: str, english: str, lang: str) -> str:
    return name if lang == "ja" else f"{_translations(lang).gettext(english)} ({name})"


class _Pdf:
    """A landscape A4 document: title, facts, headings, tables, notes."""

    def __init__(self, lang: str, title: str, company: Company) -> None:
        from reportlab.lib.styles import ParagraphStyle
        from reportlab.lib.units import mm
        self.lang, self.title, self.company = lang, title, company
        font = font_name()
        self.body = ParagraphStyle("body", fontName=font, fontSize=9.5, leading=14,
                                   wordWrap="CJK")
        self.cell = ParagraphStyle("cell", parent=self.body, fontSize=8.5, leading=11)
        self.small = ParagraphStyle("small", parent=self.body, fontSize=8.5, leading=12)
        self.h1 = ParagraphStyle("h1", parent=self.body, fontSize=18, leading=26,
                                 alignment=1, spaceAfter=4 * mm)
        self.h2 = ParagraphStyle("h2", parent=self.body, fontSize=12, leading=18,
                                 spaceBefore=5 * mm, spaceAfter=2 * mm)
        self.story: list[Any] = [self._p(title, self.h1)]

    def _p(self, text: str, style: Any) -> Any:
        from reportlab.platypus import Paragraph
        return Paragraph(escape(text), style)

    def facts(self, pairs: Sequence[tuple[str, str]]) -> None:
        from reportlab.lib import colors
        from reportlab.lib.units import mm
        from reportlab.platypus import Spacer, Table, TableStyle
        table = Table([[self._p(k, self.body), self._p(v, self.body)] for k, v in pairs],
                      colWidths=[35 * mm, 120 * mm], hAlign="LEFT")
        table.setStyle(TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
            ("BACKGROUND", (0, 0), (0, -1), colors.Color(0.94, 0.94, 0.94)),
        ]))
        self.story += [table, Spacer(1, 3 * mm)]

    def heading(self, text: str) -> None:
        self.story.append(self._p(text, self.h2))

    def note(self, text: str) -> None:
        from reportlab.lib.units import mm
        from reportlab.platypus import Spacer
        self.story += [Spacer(1, 2 * mm), self._p(text, self.small)]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]],
              widths: Sequence[float], empty: str) -> None:
        from reportlab.lib import colors
        from reportlab.lib.units import mm
        from reportlab.platypus import Table, TableStyle
        if not rows:
            self.story.append(self._p(empty, self.body))
            return
        data = [[self._p(h, self.cell) for h in header]]
        data += [[self._p(c, self.cell) for c in row] for row in rows]
        table = Table(data, colWidths=[w * mm for w in widths], repeatRows=1,
                      hAlign="LEFT")
        table.setStyle(TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.94, 0.94, 0.94)),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]))
        self.story.append(table)

    def build(self) -> bytes:
        from reportlab.lib.pagesizes import A4, landscape
        from reportlab.lib.units import mm
        from reportlab.platypus import SimpleDocTemplate
        buf = io.BytesIO()
        doc = SimpleDocTemplate(buf, pagesize=landscape(A4), leftMargin=15 * mm,
                                rightMargin=15 * mm, topMargin=15 * mm, bottomMargin=15 * mm,
                                title=self.title, author="kinko", creator="kinko",
                                subject=self.company.code)
        doc.build(self.story)
        return buf.getvalue()


# -- closing a month ----------------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    report_id: int
    month: str
    created: bool  # False: the month was already closed (nothing sent)
    sent: int  # notices handed over


def notice_text(settings: Settings, company: str, month: str,
                lang: str = NOTICE_LANG) -> tuple[str, str]:
    """Subject and body of the client notice: the company and the month, nothing else."""
    tr = _notice_translations(lang)
    args = {"company": company, "month": month_label(month, lang)}
    subject = tr.gettext(NOTICE_SUBJECT) % args
    body = "\n\n".join([
        tr.gettext(NOTICE_READY) % args,
        tr.gettext(NOTICE_OPEN) % {"url": client_url(settings) + "reports"},
        tr.gettext(NO_PERSONAL_DATA),
        tr.gettext(AUTOMATIC),
    ]) + "\n"
    return subject, body


def closed_months(db: Session, company_id: int) -> list[MonthlyReport]:
    return list(db.execute(select(MonthlyReport).where(MonthlyReport.company_id == company_id)
                           .order_by(MonthlyReport.month.desc())).scalars())


def find_closed(db: Session, company_id: int, month: str) -> MonthlyReport | None:
    return db.execute(select(MonthlyReport).where(
        MonthlyReport.company_id == company_id, MonthlyReport.month == month)
    ).scalar_one_or_none()


def close_month(services: Services, company: Company | int, month: str,
                actor: Actor = SYSTEM, *, now: datetime | None = None,
                remote_addr: str | None = None) -> Closed:
    """Close ``month`` for the company (idempotent) and tell its client users.

    A month that has not begun yet is refused (``future_month``); the current
    month may be closed on demand.  The notice goes out once, after the
    commit, to every active client user with an e-mail address.
    """
    parse_month(month)
    now = aware_utc(now or datetime.now(UTC))
    if month > current_month(now):
        raise ReportError("future_month")
    company_id = company if isinstance(company, int) else company.id
    settings = services.settings
    try:
        with services.sessions() as db, db.begin():
            found = find_closed(db, company_id, month)
            if found is not None:
                return Closed(found.id, month, False, 0)
            target = db.get(Company, company_id)
            if target is None:
                raise ReportError("no_company")
            row = MonthlyReport(company_id=company_id, month=month,
                                generated_at=now.replace(tzinfo=None),
                                generated_by=actor.label[:200] or actor.kind)
            db.add(row)
            db.flush()  # a concurrent close fails here (IntegrityError)
            users = db.execute(select(ClientUser).where(
                ClientUser.company_id == company_id, ClientUser.active.is_(True),
                ClientUser.email.is_not(None))).scalars().all()
            # Each user is told in their own language.
            langs = {u.email: recipient_lang(u) for u in users if u.email}
            texts: dict[str, tuple[str, str]] = {}
            refused = None
            for lang in sorted(set(langs.values())) or [NOTICE_LANG]:
                texts[lang] = notice_text(settings, target.name, month, lang)
                refused = refused or _check(db, target, month, *texts[lang], lang)
            to = [] if refused else sorted(langs)
            if to:
                row.notified_at = now.replace(tzinfo=None)
            details: dict[str, Any] = {"report": "monthly", "month": month,
                                       "recipients": len(to)}
            if refused:
                details["notice_refused"] = refused
            record(db, services.audit_key, Tag.REPORT_GENERATED, actor,
                   company_id=company_id, remote_addr=remote_addr, details=details)
            report_id = row.id
    except IntegrityError:
        with services.sessions() as db:
            found = find_closed(db, company_id, month)
        if found is None:
            raise
        return Closed(found.id, month, False, 0)
    sent = sum(notify.send(settings, addr, *texts[langs[addr]]) for addr in to)
    return Closed(report_id, month, True, sent)


def _check(db: Session, company: Company, month: str, subject: str, body: str,
           lang: str = NOTICE_LANG) -> str | None:
    """None when the notice is fit to send, else the refusal code (logged)."""
    start, end = month_bounds(month)
    files = [FileFacts(r.filename, r.size, r.sha256) for r in db.execute(
        select(Upload.filename, Upload.size, Upload.sha256)
        .where(Upload.company_id == company.id, Upload.created_at < end))]
    blank_subject, blank_body = notice_text_blank(lang)
    try:
        check_notice(subject + "\n" + body, files,
                     allowed=[company.name, month_label(month, lang)],
                     boilerplate=blank_subject + "\n" + blank_body)
    except NoticeRefused as exc:
        log.error("report notice for company %d refused: it would carry a %s", company.id,
                  exc.what)
        return exc.what
    return None


def notice_text_blank(lang: str = NOTICE_LANG) -> tuple[str, str]:
    """The fixed wording of the notice, without any values (for the leak check)."""
    tr = _notice_translations(lang)
    args = {"company": "", "month": "", "url": ""}
    return (tr.gettext(NOTICE_SUBJECT) % args,
            "\n".join(tr.gettext(m) % args if "%(" in m else tr.gettext(m)
                      for m in (NOTICE_READY, NOTICE_OPEN, NO_PERSONAL_DATA, AUTOMATIC)))


def run_monthly(services: Services, now: datetime | None = None,
                actor: Actor = SYSTEM) -> list[Closed]:
    """The worker's job: once the JST month has ended, close it for every company
    that existed by then (each once: a closed month is skipped)."""
    now = aware_utc(now or datetime.now(UTC))
    month = previous_month(now)
    _start, end = month_bounds(month)
    with services.sessions() as db:
        ids = list(db.execute(
            select(Company.id).where(Company.created_at < end)
            .where(~select(MonthlyReport.id).where(
                MonthlyReport.company_id == Company.id, MonthlyReport.month == month)
                .exists())
            .order_by(Company.id)).scalars())
    done = []
    for company_id in ids:
        try:
            done.append(close_month(services, company_id, month, actor, now=now))
        except Exception:
            log.exception("could not close %s for company %d", month, company_id)
    return [c for c in done if c.created]


__all__ = [
    "Activity",
    "Closed",
    "LedgerRow",
    "ReportError",
    "close_month",
    "closed_months",
    "current_month",
    "find_closed",
    "is_month",
    "ledger_csv",
    "ledger_pdf",
    "ledger_rows",
    "month_bounds",
    "month_label",
    "monthly_activity",
    "monthly_csv",
    "monthly_pdf",
    "neutralise",
    "previous_month",
    "run_monthly",
]
