"""Notices by e-mail about uploads (run every minute by the worker: ``kinko.notices``).

Two kinds, both batched per company:

* **staff**: "files have arrived from <company>: <count>", to every active
  staff member with an e-mail address who may serve the company (managers,
  and handlers assigned to it).  Uploads received after the company's
  ``NoticeState.last_notified_at`` are counted; the notice goes out once the
  oldest of them is ``KINKO_NOTICE_BATCH_MINUTES`` old (0: at the next run),
  so a client sending twenty files gets one notice, not twenty.
* **client**: how many of the company's files reached the vault and how many
  could not be accepted (virus found / upload rules), to every active client
  user of the company with an e-mail address; outcomes after
  ``client_last_notified_at``, with the same batch window.

A notice says which company and how many, never a file name, size, hash or
anything personal: file names often contain employees' names.  The text is
built only from fixed catalogue strings, the company name, counts and the
app's address; :func:`check_notice` checks it once more before anything is
sent and refuses (and logs) a notice that would carry any of those.

Exactly once per batch, even with two workers: each company is handled in
its own transaction that first locks its ``NoticeState`` row (SQLite:
``BEGIN IMMEDIATE``, see :mod:`portal.db`; PostgreSQL: ``SELECT … FOR
UPDATE``), then advances the watermark and records ``system:notice:sent``
together.  The e-mails are sent after the commit, so a rolled-back batch
sends nothing and a slow SMTP server never holds the database lock; a
notice that cannot be sent is logged and not retried (notices are a
convenience: the inbox and the room are the truth).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import notify
from .audit import SYSTEM, Actor, Tag, record
from .i18n import N_
from .i18n import translations as _translations
from .models import ClientUser, Company, NoticeState, Staff, Status, Upload, UploadEvent
from .models.base import aware_utc
from .services import Services
from .settings import Settings

log = logging.getLogger(__name__)

LANG = "ja"  # the users read Japanese first (domain.md)
# A company seen for the first time is told about the last day only, not
# about every upload since the office started.
FIRST_LOOKBACK = timedelta(days=1)
OUTCOMES = (Status.VAULTED, Status.INFECTED, Status.REFUSED)

_TWELVE_DIGITS = re.compile(r"(?<!\d)\d{4}[- ]?\d{4}[- ]?\d{4}(?!\d)")
_URL = re.compile(r"https?://\S+")
_NUMBER = re.compile(r"\d[\d,]*")
# A stem this short ("a", "01") is not identifying and would match anything.
_MIN_STEM = 3
# Small sizes collide with counts ("3 files") and say nothing about anyone.
_MIN_SIZE = 1000


STAFF_SUBJECT = N_("[kinko] New files from %(company)s: %(count)d")
STAFF_ARRIVED = N_("New files have arrived from %(company)s. Number of files: %(count)d.")
STAFF_OPEN = N_("Please sign in to the office console to check them: %(url)s")
CLIENT_SUBJECT = N_("[kinko] An update on the files you sent")
CLIENT_INTRO = N_("This is an update on the files %(company)s sent to the office.")
CLIENT_VAULTED = N_("Stored safely in the office vault: %(count)d")
CLIENT_INFECTED = N_("Not accepted because a virus was found: %(count)d")
CLIENT_REFUSED = N_("Not accepted because the file did not meet the upload rules "
                    "(for example its type, or password protection): %(count)d")
CLIENT_REJECTED_HINT = N_("Files that could not be accepted have been deleted. Please do not "
                          "send them by e-mail: upload a corrected file to your room instead.")
CLIENT_OPEN = N_("Please sign in to your room to see the details: %(url)s")
NO_PERSONAL_DATA = N_("For your protection, this notice carries no file names or other "
                      "personal data.")
AUTOMATIC = N_("This is an automatic notice from kinko.")


class NoticeRefused(Exception):  # noqa: N818 - a refusal, not a failure
    """The text would carry something it must not; ``what`` says which kind."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class FileFacts:
    """What a notice must never reveal about one upload."""

    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


def check_notice(text: str, files: Iterable[FileFacts], allowed: Iterable[str] = (),
                 boilerplate: str = "") -> None:
    """Raise :class:`NoticeRefused` if ``text`` carries a file name (or its stem),
    a size, a hash or a 12-digit run.  ``what`` is a code, never the value.

    ``allowed`` are strings the notice is meant to carry (the company name),
    and ``boilerplate`` is the fixed wording (the text rendered without any
    values): a file called "ファイル.csv" or named after the company does not
    make its notice a leak.
    """
    if _TWELVE_DIGITS.search(text):
        raise NoticeRefused("twelve_digits")
    for ok in allowed:
        if ok:
            text = text.replace(ok, " ")
    folded = text.casefold()
    fixed = boilerplate.casefold()
    numbers = set(_NUMBER.findall(_URL.sub(" ", text)))
    for f in files:
        name = f.filename.strip().casefold()
        stem = name.rsplit(".", 1)[0] if "." in name else name
        if name and name in folded and name not in fixed:
            raise NoticeRefused("file_name")
        if len(stem) >= _MIN_STEM and stem in folded and stem not in fixed:
            raise NoticeRefused("file_name")
        if f.sha256 and (f.sha256.lower() in folded or f.sha256[:12].lower() in folded):
            raise NoticeRefused("sha256")
        if f.size >= _MIN_SIZE and ({str(f.size), f"{f.size:,}"} & numbers):
            raise NoticeRefused("size")


def office_url(settings: Settings) -> str:
    host = settings.office_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{settings.office_port}/"


def client_url(settings: Settings) -> str:
    return settings.public_url.rstrip("/") + "/"


def recipient_lang(account: ClientUser | Staff) -> str:
    """The language a person reads their notices in (their saved preference)."""
    return account.language if account.language in ("ja", "en") else LANG


def staff_text(settings: Settings, company: str, count: int,
               lang: str = LANG) -> tuple[str, str]:
    tr = _translations(lang)
    args = {"company": company, "count": count}
    subject = tr.gettext(STAFF_SUBJECT) % args
    body = "\n\n".join([
        tr.gettext(STAFF_ARRIVED) % args,
        tr.gettext(STAFF_OPEN) % {"url": office_url(settings)},
        tr.gettext(NO_PERSONAL_DATA),
        tr.gettext(AUTOMATIC),
    ]) + "\n"
    return subject, body


def client_text(settings: Settings, company: str, counts: Counter[str],
                lang: str = LANG) -> tuple[str, str]:
    tr = _translations(lang)
    lines = []
    for status, msgid in ((Status.VAULTED, CLIENT_VAULTED), (Status.INFECTED, CLIENT_INFECTED),
                          (Status.REFUSED, CLIENT_REFUSED)):
        if counts[status]:
            lines.append(tr.gettext(msgid) % {"count": counts[status]})
    parts = [tr.gettext(CLIENT_INTRO) % {"company": company}, "\n".join(lines)]
    if counts[Status.INFECTED] or counts[Status.REFUSED]:
        parts.append(tr.gettext(CLIENT_REJECTED_HINT))
    parts += [tr.gettext(CLIENT_OPEN) % {"url": client_url(settings)},
              tr.gettext(NO_PERSONAL_DATA), tr.gettext(AUTOMATIC)]
    return tr.gettext(CLIENT_SUBJECT), "\n\n".join(parts) + "\n"


# -- the job -------------------------------------------------------------------


def _lock_state(db: Session, company_id: int, now: datetime) -> NoticeState:
    """The company's NoticeState row, locked for this transaction (created on
    first use).  On SQLite the whole transaction already holds the write lock."""
    state = db.execute(select(NoticeState).where(NoticeState.company_id == company_id)
                       .with_for_update()).scalar_one_or_none()
    if state is None:
        start = now - FIRST_LOOKBACK
        state = NoticeState(company_id=company_id, last_notified_at=start,
                            client_last_notified_at=start)
        db.add(state)
        db.flush()  # a concurrent insert fails here (IntegrityError): that run skips
    return state


def run_notices(services: Services, now: datetime | None = None,
                actor: Actor = SYSTEM) -> int:
    """Send the notices that are due; returns how many e-mails were handed over
    (to the SMTP server, or written to the outbox)."""
    now = aware_utc(now or datetime.now(UTC))
    with services.sessions() as db:
        company_ids = list(db.execute(select(Company.id).order_by(Company.id)).scalars())
    mails: list[Mail] = []
    for company_id in company_ids:
        for step in (_staff_batch, _client_batch):
            try:
                mails += step(services, company_id, now, actor)
            except IntegrityError:
                log.info("notices for company %d are being sent by another worker", company_id)
    sent = 0
    for mail in mails:
        sent += notify.send(services.settings, mail.to, mail.subject, mail.body)
    return sent


def _due(times: Sequence[datetime], now: datetime, settings: Settings) -> bool:
    window = timedelta(minutes=settings.notice_batch_minutes)
    return bool(times) and min(times) <= now - window


def _compose(company: Company, subject: str, body: str, boilerplate: str,
             files: Sequence[FileFacts], kind: str) -> str | None:
    """None when the text is fit to send, else the refusal code (logged)."""
    try:
        check_notice(subject + "\n" + body, files, allowed=[company.name],
                     boilerplate=boilerplate)
    except NoticeRefused as exc:
        log.error("%s notice for company %d refused: it would carry a %s", kind, company.id,
                  exc.what)
        return exc.what
    return None


def _staff_batch(services: Services, company_id: int, now: datetime,
                 actor: Actor) -> list[Mail]:
    settings = services.settings
    with services.sessions() as db, db.begin():
        company = db.get(Company, company_id)
        if company is None:
            return []
        state = _lock_state(db, company_id, now)
        since = aware_utc(state.last_notified_at)
        rows = db.execute(
            select(Upload.created_at, Upload.filename, Upload.size, Upload.sha256)
            .where(Upload.company_id == company_id, Upload.created_at > since,
                   Upload.created_at <= now)
        ).all()
        times = [aware_utc(r.created_at) for r in rows]
        if not _due(times, now, settings):
            return []
        count = len(rows)
        staff = db.execute(select(Staff).where(Staff.active.is_(True),
                                               Staff.email.is_not(None))).scalars().all()
        langs = {s.email: recipient_lang(s) for s in staff
                 if s.email and s.may_serve(company_id)}
        texts: dict[str, tuple[str, str]] = {}
        refused = None
        for lang in sorted(set(langs.values())) or [LANG]:  # each recipient's language
            texts[lang] = staff_text(settings, company.name, count, lang)
            refused = refused or _compose(
                company, *texts[lang], "\n".join(staff_text(settings, "", 0, lang)),
                [FileFacts(r.filename, r.size, r.sha256) for r in rows], "staff")
        to = [] if refused else sorted(langs)
        state.last_notified_at = max(times)
        details: dict[str, Any] = {"kind": "staff", "company_id": company_id, "count": count,
                                   "recipients": len(to)}
        if refused:
            details["refused"] = refused
        record(db, services.audit_key, Tag.NOTICE_SENT, actor, company_id=company_id,
               details=details)
    return [Mail(addr, *texts[langs[addr]]) for addr in to]


def _client_batch(services: Services, company_id: int, now: datetime,
                  actor: Actor) -> list[Mail]:
    settings = services.settings
    with services.sessions() as db, db.begin():
        company = db.get(Company, company_id)
        if company is None:
            return []
        state = _lock_state(db, company_id, now)
        since = aware_utc(state.client_last_notified_at)
        rows = db.execute(
            select(UploadEvent.at, UploadEvent.status, Upload.id, Upload.filename, Upload.size,
                   Upload.sha256)
            .join(Upload, Upload.id == UploadEvent.upload_id)
            .where(Upload.company_id == company_id,
                   UploadEvent.status.in_([str(s) for s in OUTCOMES]),
                   UploadEvent.at > since, UploadEvent.at <= now)
        ).all()
        times = [aware_utc(r.at) for r in rows]
        if not _due(times, now, settings):
            return []
        outcome: dict[str, str] = {}
        for r in sorted(rows, key=lambda r: aware_utc(r.at)):
            outcome[r.id] = r.status  # one outcome per upload: its latest
        counts: Counter[str] = Counter(outcome.values())
        every: Counter[str] = Counter({s: 1 for s in OUTCOMES})
        users = db.execute(select(ClientUser).where(
            ClientUser.company_id == company_id, ClientUser.active.is_(True),
            ClientUser.email.is_not(None))).scalars().all()
        langs = {u.email: recipient_lang(u) for u in users if u.email}
        texts: dict[str, tuple[str, str]] = {}
        refused = None
        for lang in sorted(set(langs.values())) or [LANG]:  # each recipient's language
            texts[lang] = client_text(settings, company.name, counts, lang)
            refused = refused or _compose(
                company, *texts[lang], "\n".join(client_text(settings, "", every, lang)),
                [FileFacts(r.filename, r.size, r.sha256) for r in rows], "client")
        to = [] if refused else sorted(langs)
        state.client_last_notified_at = max(times)
        details: dict[str, Any] = {
            "kind": "client", "company_id": company_id, "count": len(outcome),
            "vaulted": counts[Status.VAULTED],
            "rejected": counts[Status.INFECTED] + counts[Status.REFUSED],
            "recipients": len(to)}
        if refused:
            details["refused"] = refused
        record(db, services.audit_key, Tag.NOTICE_SENT, actor, company_id=company_id,
               details=details)
    return [Mail(addr, *texts[langs[addr]]) for addr in to]
