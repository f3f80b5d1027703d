"""Searching and exporting the handling log (取扱記録), and incident exports.

No Flask here: the office pages and the ``kinko audit`` commands both call
these functions.

* :func:`query_events` builds the filtered ``SELECT`` (actor, company,
  action, upload, address, time window).
* :func:`iter_events` walks it in keyset batches (``id > last … LIMIT n``),
  never holding more than one batch in memory.  After every batch it ends
  the session's transaction: on SQLite every transaction is ``BEGIN
  IMMEDIATE`` (:mod:`portal.db`), so one long read would otherwise hold the
  write lock and stall uploads for as long as a download of the export lasts.
* :func:`write_csv` writes UTF-8 with a BOM (Excel in Japan otherwise reads
  it as Shift_JIS) and neutralises spreadsheet formulas: any cell starting
  with ``= + - @``, a tab or a carriage return (and their full-width forms,
  which a Japanese IME produces) gets a leading ``'`` (the OWASP rule for
  CSV injection).  Log values such as a login or a display name inside the
  details are chosen by people, so they are never trusted to be inert.
* :func:`write_jsonl` keeps every value raw.  It is the form to verify: each
  line carries ``at`` exactly as hashed, ``details`` as the stored string,
  ``prev_hash`` and ``hash``; ``hash = HMAC-SHA256(audit key,
  json.dumps([at, action, actor_kind, actor_id, actor_label, company_id,
  upload_id, remote_addr, details, prev_hash], ensure_ascii=False,
  separators=(",", ":")))`` (:func:`portal.audit.canonical`).
* :func:`incident` and :func:`write_incident`: everything that happened in a
  window (optionally one actor, company or address), the uploads and
  companies it touched and a one-page summary, for the report the office
  owes its client and the regulator.

Security invariant: the log holds no file names, file content or numbers
(:func:`portal.audit.record` refuses them), and nothing here adds any: the
list of touched files names uploads by id, company and status only.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, collate, func, select, text
from sqlalchemy.orm import Session

from .i18n import translations as _translations
from .models import AuditEvent, Company, Upload
from .pii import mask_mynumbers

JST = ZoneInfo("Asia/Tokyo")
BATCH = 1000
_HEX_ID = re.compile(r"[0-9a-f]{16,64}")
BOM = "\ufeff"

COLUMNS = ("id", "at", "at_jst", "action", "actor_kind", "actor_id", "actor_label",
           "company_id", "upload_id", "remote_addr", "details", "prev_hash", "hash")
TOUCHED_COLUMNS = ("upload_id", "company_id", "company_code", "company_name", "status",
                   "events", "first_at", "last_at")
# ASCII formula starters, tab and CR (OWASP), and the full-width forms.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


class ExportError(Exception):
    """A filter or a time value could not be understood."""




# -- time ---------------------------------------------------------------------


def as_utc(at: datetime) -> datetime:
    """As the database stores it: naive UTC.  Naive values are taken as UTC already."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


def _jst_to_utc(at: datetime) -> datetime:
    return as_utc(at if at.tzinfo is not None else at.replace(tzinfo=JST))


def parse_time(text: str, *, end: bool = False) -> datetime:
    """An ISO date or date-time (JST unless it names a zone), as naive UTC.

    A bare date means the start of that JST day, or with ``end=True`` the
    start of the next one, so that ``--to 2025-01-31`` includes the 31st.
    Raises :class:`ExportError`.
    """
    raw = text.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            if end:
                day += timedelta(days=1)
            return _jst_to_utc(datetime.combine(day, time()))
        return _jst_to_utc(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError as exc:
        raise ExportError(f"not an ISO date or date-time: {text[:40]!r}") from exc


def iso_utc(at: datetime) -> str:
    """``at`` exactly as the chain hashes it (naive UTC, microseconds)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


def jst_text(at: datetime | None) -> str:
    if at is None:
        return ""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S")


# -- queries ------------------------------------------------------------------


def actor_condition(actor: str) -> ColumnElement[bool]:
    """``kind:id`` (``staff:3``, ``client:12``) or a login (the recorded label)."""
    kind, sep, ident = actor.partition(":")
    if sep and kind.isalpha() and ident.isdigit() and len(ident) <= 12:
        return (AuditEvent.actor_kind == kind) & (AuditEvent.actor_id == int(ident))
    return AuditEvent.actor_label == actor


def conditions(*, since: datetime | None = None, until: datetime | None = None,
               actor: str | None = None, company_id: int | None = None,
               action: str | None = None, upload_id: str | None = None,
               addr: str | None = None, max_id: int | None = None,
               ) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a search.  ``since`` inclusive, ``until`` exclusive.

    ``action`` matches a whole tag or a prefix (``office:file:``); ``LIKE``
    wildcards in it are taken literally.
    """
    out: list[ColumnElement[bool]] = []
    if since is not None:
        out.append(AuditEvent.at >= as_utc(since))
    if until is not None:
        out.append(AuditEvent.at < as_utc(until))
    if actor:
        out.append(actor_condition(actor))
    if company_id is not None:
        out.append(AuditEvent.company_id == company_id)
    if action:
        out.append(action_like(action))
    if upload_id:
        out.append(AuditEvent.upload_id == upload_id)
    if addr:
        out.append(AuditEvent.remote_addr == addr)
    if max_id is not None:
        out.append(AuditEvent.id <= max_id)
    return out


def action_like(action: str) -> ColumnElement[bool]:
    """``action LIKE 'prefix%'`` with the prefix's wildcards taken literally.

    Case-insensitive (ASCII) on SQLite, case-sensitive on PostgreSQL: the
    database's own ``LIKE``.
    """
    escaped = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return AuditEvent.action.like(escaped + "%", escape="\\")


def _postgres(db: Session) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _action_key(db: Session) -> ColumnElement[Any]:
    """``action`` as ``ix_audit_action`` orders it (SQLite: ``COLLATE NOCASE``)."""
    return AuditEvent.action.expression if _postgres(db) else collate(AuditEvent.action, "NOCASE")


def action_keys(db: Session, action: str) -> list[str]:
    """The distinct stored actions that ``action`` is a prefix of, in index order.

    A loose index scan of ``ix_audit_action``: one indexed ``LIMIT 1`` seek
    per distinct action (a handful), never a read of the matching events.
    The actions matching a prefix are contiguous in the index's order
    (SQLite: NOCASE, which folds ASCII case like its ``LIKE``; PostgreSQL:
    ``text_pattern_ops``, byte order, like its case-sensitive ``LIKE``), so
    the walk starts at the prefix and stops at the first action that does not
    match.  On SQLite, actions that differ only in case are one key.
    """
    like = action_like(action)
    out: list[str] = []
    last: str | None = None
    after: ColumnElement[bool]
    while True:
        if _postgres(db):
            # text_pattern_ops orders with ~<~ (bytes); its index serves only
            # those operators, not < or an ORDER BY in the collation's order.
            after = AuditEvent.action.op("~>=~" if last is None else "~>~",
                                         is_comparison=True)(action if last is None else last)
            order: Any = text("audit_events.action USING ~<~")
        else:
            key = _action_key(db)
            after = key >= action if last is None else key > last
            order = key
        row = db.execute(select(AuditEvent.action, like).where(after)
                         .order_by(order).limit(1)).first()
        if row is None or not row[1]:
            return out
        last = str(row[0])
        out.append(last)


def newest_ids_by_action(db: Session, where: Sequence[ColumnElement[bool]], action: str,
                         limit: int, offset: int = 0) -> list[int]:
    """Ids of the events matching ``where``, newest first, ``offset`` skipped,
    at most ``limit``.  ``where`` is the action filter of ``action``
    (:func:`conditions`), meant without other filters: with one, the database
    may prefer that filter's index for every action.

    A prefix spans several actions, so one range of ``ix_audit_action`` is not
    in id order: asking for ``ORDER BY id DESC LIMIT n`` over it makes the
    database read and sort every match.  Instead, for each action under the
    prefix (:func:`action_keys`), ``ix_audit_action`` (``action, id``) gives
    that action's newest ``offset + limit`` ids in order (PostgreSQL may walk
    the primary key backwards instead when the action is frequent: also in
    order, also stopped by the LIMIT); the runs are merged here.  What is read
    is bounded by the page's position, not by the number of matching events.
    """
    want = offset + limit
    key = _action_key(db)
    runs = [list(db.execute(select(AuditEvent.id).where(*where, key == k)
                            .order_by(AuditEvent.id.desc()).limit(want)).scalars())
            for k in action_keys(db, action)]
    merged = heapq.merge(*runs, reverse=True)
    return list(itertools.islice(merged, offset, want))


def events_by_id(db: Session, ids: Sequence[int]) -> list[AuditEvent]:
    """The events with these ids, newest first (primary key look-ups)."""
    if not ids:
        return []
    return list(db.execute(select(AuditEvent).where(AuditEvent.id.in_(list(ids)))
                           .order_by(AuditEvent.id.desc())).scalars())


def query_events(db: Session | None = None, *, since: datetime | None = None,
                 until: datetime | None = None, actor: str | None = None,
                 company_id: int | None = None, action: str | None = None,
                 upload_id: str | None = None, addr: str | None = None,
                 max_id: int | None = None) -> Select[AuditEvent]:
    """The filtered events as a ``Select`` without order or limit.

    Naive datetimes are UTC (use :func:`parse_time` for user input).  ``db``
    is accepted for symmetry with the other functions and not used.
    """
    del db
    return select(AuditEvent).where(*conditions(
        since=since, until=until, actor=actor, company_id=company_id, action=action,
        upload_id=upload_id, addr=addr, max_id=max_id))


def last_id(db: Session) -> int:
    """The newest event id (0 for an empty log): an export's snapshot bound."""
    return int(db.execute(select(func.max(AuditEvent.id))).scalar_one() or 0)


def end_read(db: Session) -> None:
    """End the (read-only) transaction so SQLite's write lock is not held."""
    if db.in_transaction():
        db.commit()


def iter_events(db: Session, stmt: Select[AuditEvent], batch: int = BATCH,
                ) -> Iterator[AuditEvent]:
    """The events of ``stmt`` in id order, fetched ``batch`` rows at a time.

    ``db`` must be a session used only for reading: its transaction is ended
    after every batch, and the rows are detached (plain values) once read.
    """
    last = 0
    while True:
        rows = list(db.execute(stmt.where(AuditEvent.id > last)
                               .order_by(AuditEvent.id).limit(batch)).scalars())
        for row in rows:
            db.expunge(row)
        end_read(db)
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        if len(rows) < batch:
            return


# -- CSV and JSON lines ---------------------------------------------------------


def neutralise(value: Any) -> str:
    """A CSV cell that no spreadsheet will run as a formula (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def event_dict(ev: AuditEvent) -> dict[str, Any]:
    """Every column, raw, ``at`` as hashed: enough to verify the row's HMAC."""
    return {"id": ev.id, "at": iso_utc(ev.at), "action": ev.action,
            "actor_kind": ev.actor_kind, "actor_id": ev.actor_id,
            "actor_label": ev.actor_label, "company_id": ev.company_id,
            "upload_id": ev.upload_id, "remote_addr": ev.remote_addr,
            "details": ev.details, "prev_hash": ev.prev_hash, "hash": ev.hash}


def iter_csv_rows(events: Iterable[AuditEvent]) -> Iterator[list[str]]:
    """The header, then one neutralised row per event."""
    yield list(COLUMNS)
    for ev in events:
        d = event_dict(ev)
        d["at_jst"] = jst_text(ev.at)
        yield [neutralise(d[c]) for c in COLUMNS]


def _csv_chunks(rows: Iterable[Sequence[Any]], per_chunk: int = 200) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf)  # RFC 4180: quoted as needed, CRLF line ends
    buf.write(BOM)
    n = 0
    for row in rows:
        writer.writerow(row)
        n += 1
        if n % per_chunk == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def iter_csv(events: Iterable[AuditEvent]) -> Iterator[bytes]:
    """The CSV export as UTF-8 chunks, BOM first (for a streamed response)."""
    for chunk in _csv_chunks(iter_csv_rows(events)):
        yield chunk.encode("utf-8")


def iter_jsonl(events: Iterable[AuditEvent], per_chunk: int = 200) -> Iterator[bytes]:
    """One JSON object per line, raw values, UTF-8 (for a streamed response)."""
    lines: list[str] = []
    for ev in events:
        lines.append(json.dumps(event_dict(ev), ensure_ascii=False) + "\n")
        if len(lines) >= per_chunk:
            yield "".join(lines).encode("utf-8")
            lines = []
    if lines:
        yield "".join(lines).encode("utf-8")


def write_csv(events: Iterable[AuditEvent], fh: IO[bytes]) -> None:
    """Write the CSV export to a binary file (UTF-8 with BOM)."""
    for chunk in iter_csv(events):
        fh.write(chunk)


def write_jsonl(events: Iterable[AuditEvent], fh: IO[bytes]) -> None:
    """Write the JSON lines export to a binary file."""
    for chunk in iter_jsonl(events):
        fh.write(chunk)


# -- incidents ------------------------------------------------------------------


@dataclass(frozen=True)
class Touched:
    """One upload touched in the window: id, company, status.  Never its name."""

    upload_id: str
    company_id: int | None
    company_code: str
    company_name: str
    status: str
    events: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class TouchedCompany:
    id: int
    code: str
    name: str
    events: int


@dataclass(frozen=True)
class SeenActor:
    kind: str
    id: int | None
    label: str
    events: int


@dataclass
class Incident:
    """An incident export: its filters, aggregates, and a way back to its events.

    The events themselves are not held: :meth:`events` walks them in batches
    (bounded by ``max_id``, the newest event when the incident was taken, so
    the files agree with the counts).
    """

    since: datetime
    until: datetime
    actor: str | None
    company: Company | None
    addr: str | None
    max_id: int
    total: int
    first_at: datetime | None
    last_at: datetime | None
    counts: dict[str, int]
    uploads: list[Touched]
    companies: list[TouchedCompany]
    actors: list[SeenActor]
    taken_at: datetime
    db: Session = field(repr=False)

    def query(self) -> Select[AuditEvent]:
        return query_events(since=self.since, until=self.until, actor=self.actor,
                            company_id=self.company.id if self.company else None,
                            addr=self.addr, max_id=self.max_id)

    def events(self, batch: int = BATCH) -> Iterator[AuditEvent]:
        return iter_events(self.db, self.query(), batch)


def incident(db: Session, since: datetime, until: datetime, actor: str | None = None,
             company_id: int | None = None, addr: str | None = None) -> Incident:
    """Aggregate a window of the log in SQL (no event is loaded into memory).

    ``since``/``until`` are naive UTC or aware; ``until`` is exclusive.  Keep
    ``db`` open (and otherwise unused) until the incident has been written.
    """
    if until <= since:
        raise ExportError("the end of the window must be after its start")
    max_id = last_id(db)
    where = conditions(since=since, until=until, actor=actor, company_id=company_id,
                       addr=addr, max_id=max_id)
    e = AuditEvent
    total, first_at, last_at = db.execute(
        select(func.count(), func.min(e.at), func.max(e.at)).where(*where)).one()
    counts = {a: int(n) for a, n in db.execute(
        select(e.action, func.count()).where(*where).group_by(e.action).order_by(e.action))}
    actors = [SeenActor(k, i, lbl or "", int(n)) for k, i, lbl, n in db.execute(
        select(e.actor_kind, e.actor_id, e.actor_label, func.count()).where(*where)
        .group_by(e.actor_kind, e.actor_id, e.actor_label)
        .order_by(e.actor_kind, e.actor_label, e.actor_id))]
    per_upload = db.execute(
        select(e.upload_id, func.count(), func.min(e.at), func.max(e.at))
        .where(*where, e.upload_id.is_not(None)).group_by(e.upload_id)
        .order_by(func.min(e.at), e.upload_id)).all()
    upload_rows = _upload_rows(db, [str(r[0]) for r in per_upload])
    company_events = {cid: int(n) for cid, n in db.execute(
        select(e.company_id, func.count()).where(*where, e.company_id.is_not(None))
        .group_by(e.company_id))}
    company_ids = set(company_events) | {u[0] for u in upload_rows.values()}
    companies = {c.id: c for c in db.execute(
        select(Company).where(Company.id.in_(company_ids))).scalars()} if company_ids else {}
    uploads = []
    for upload_id, n, first, last in per_upload:
        row = upload_rows.get(str(upload_id))
        cid, status = row if row else (None, "unknown")
        c = companies.get(cid) if cid is not None else None
        uploads.append(Touched(str(upload_id), cid, c.code if c else "", c.name if c else "",
                               status, int(n), first, last))
    touched_companies = sorted(
        (TouchedCompany(c.id, c.code, c.name, company_events.get(c.id, 0))
         for c in companies.values()), key=lambda t: t.code)
    chosen = db.get(Company, company_id) if company_id is not None else None
    result = Incident(
        since=as_utc(since), until=as_utc(until), actor=actor,
        company=chosen, addr=addr, max_id=max_id, total=int(total), first_at=first_at,
        last_at=last_at, counts=counts, uploads=uploads, companies=touched_companies,
        actors=actors, taken_at=datetime.now(UTC), db=db)
    for obj in (*companies.values(), *([chosen] if chosen else [])):
        if obj in db:
            db.expunge(obj)
    end_read(db)
    return result


def _upload_rows(db: Session, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Company and current status of each upload id (in chunks of 500)."""
    out: dict[str, tuple[int, str]] = {}
    for i in range(0, len(ids), 500):
        part = list(ids[i:i + 500])
        for uid, cid, status in db.execute(
                select(Upload.id, Upload.company_id, Upload.status).where(Upload.id.in_(part))):
            out[uid] = (cid, status)
    return out


def touched_rows(inc: Incident) -> Iterator[list[str]]:
    yield list(TOUCHED_COLUMNS)
    for t in inc.uploads:
        yield [neutralise(v) for v in (t.upload_id, t.company_id, t.company_code,
                                       t.company_name, t.status, t.events,
                                       iso_utc(t.first_at), iso_utc(t.last_at))]


def touched_json(inc: Incident) -> dict[str, Any]:
    return {
        "window": {"from": iso_utc(inc.since), "to": iso_utc(inc.until),
                   "from_jst": jst_text(inc.since), "to_jst": jst_text(inc.until)},
        "filters": {"actor": inc.actor, "company": inc.company.code if inc.company else None,
                    "addr": inc.addr},
        "taken_at": iso_utc(inc.taken_at), "last_event_id": inc.max_id,
        "events": inc.total,
        "first_event_at": iso_utc(inc.first_at) if inc.first_at else None,
        "last_event_at": iso_utc(inc.last_at) if inc.last_at else None,
        "counts": inc.counts,
        "uploads": [{"upload_id": t.upload_id, "company_id": t.company_id,
                     "company_code": t.company_code, "status": t.status,
                     "events": t.events, "first_at": iso_utc(t.first_at),
                     "last_at": iso_utc(t.last_at)} for t in inc.uploads],
        "companies": [{"id": c.id, "code": c.code, "name": c.name, "events": c.events}
                      for c in inc.companies],
        "actors": [{"kind": a.kind, "id": a.id, "label": a.label, "events": a.events}
                   for a in inc.actors],
    }




SUMMARY_LIST_MAX = 40  # one page: longer lists point to touched.csv


def summary_text(inc: Incident, lang: str = "ja") -> str:
    """The one-page summary (Japanese by default, from the catalogue)."""
    tr = _translations(lang)
    _: Callable[[str], str] = tr.gettext
    none = _("none")
    lines = [
        _("Handling log: incident summary"), "",
        _("Window: %(start)s to %(end)s (JST, end exclusive)")
        % {"start": jst_text(inc.since), "end": jst_text(inc.until)},
        _("Actor: %(value)s") % {"value": inc.actor or _("any")},
        _("Company: %(value)s") % {"value": (f"{inc.company.code} {inc.company.name}"
                                             if inc.company else _("any"))},
        _("Address: %(value)s") % {"value": inc.addr or _("any")},
        _("Prepared at: %(at)s (JST); last event included: #%(id)s")
        % {"at": jst_text(inc.taken_at), "id": inc.max_id},
        "",
        _("Events: %(n)s") % {"n": inc.total},
        _("First event: %(at)s") % {"at": jst_text(inc.first_at) or none},
        _("Last event: %(at)s") % {"at": jst_text(inc.last_at) or none},
        "", _("Events by action:"),
    ]
    lines += [f"  {action}: {n}" for action, n in inc.counts.items()] or [f"  {none}"]
    lines += ["", _("Companies touched: %(n)s") % {"n": len(inc.companies)}]
    lines += [f"  {c.code} {c.name} ({c.events})" for c in inc.companies[:SUMMARY_LIST_MAX]]
    lines += ["", _("Files touched (by upload id): %(n)s") % {"n": len(inc.uploads)}]
    lines += [f"  {t.upload_id} {t.company_code} {t.status} ({t.events})"
              for t in inc.uploads[:SUMMARY_LIST_MAX]]
    lines += ["", _("People and processes seen: %(n)s") % {"n": len(inc.actors)}]
    lines += [f"  {a.kind}:{a.id if a.id is not None else '-'} {a.label} ({a.events})"
              for a in inc.actors[:SUMMARY_LIST_MAX]]
    if max(len(inc.companies), len(inc.uploads), len(inc.actors)) > SUMMARY_LIST_MAX:
        lines += ["", _("Longer lists are cut here; touched.csv and touched.json have them "
                        "all.")]
    lines += ["", _("The log holds no My Numbers, file names or file contents. "
                    "events.jsonl carries the hash chain fields for verification.")]
    return "\n".join(lines) + "\n"


INCIDENT_FILES = ("events.csv", "events.jsonl", "touched.csv", "touched.json", "summary.txt")


def incident_parts(inc: Incident, lang: str = "ja") -> Iterator[tuple[str, Iterator[bytes]]]:
    """(file name, its bytes in chunks) for each of :data:`INCIDENT_FILES`."""
    yield "events.csv", iter_csv(inc.events())
    yield "events.jsonl", iter_jsonl(inc.events())
    yield "touched.csv", (c.encode("utf-8") for c in _csv_chunks(touched_rows(inc)))
    yield "touched.json", iter([(json.dumps(touched_json(inc), ensure_ascii=False, indent=2)
                                 + "\n").encode("utf-8")])
    yield "summary.txt", iter([summary_text(inc, lang).encode("utf-8")])


def write_incident(inc: Incident, out_dir: Path, lang: str = "ja") -> list[Path]:
    """Write the incident files into ``out_dir`` (created 0700); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for name, chunks in incident_parts(inc, lang):
        path = out_dir / name
        with path.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        paths.append(path)
    return paths


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink whose bytes are taken as they come."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._chunks.append(data)
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def iter_incident_zip(inc: Incident, lang: str = "ja") -> Iterator[bytes]:
    """The incident files as one ZIP, produced in chunks (never whole in memory).

    The sink cannot seek, so :mod:`zipfile` writes data descriptors after
    each member instead of going back to patch its header.
    """
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, chunks in incident_parts(inc, lang):
            with zf.open(name, "w", force_zip64=True) as member:
                for chunk in chunks:
                    member.write(chunk)
                    if (out := pipe.take()):
                        yield out
            if (out := pipe.take()):
                yield out
    yield pipe.take()


def filters_for_audit(values: Mapping[str, Any]) -> dict[str, Any]:
    """Export filters as audit details: empty ones dropped, digit runs masked.

    A manager may type anything into a filter box; :func:`portal.audit.record`
    would refuse a 12-digit value, so it is masked here rather than lost.
    """
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None or v == "":
            continue
        # Generated hex ids (an upload id) pass as record() lets them pass.
        out[k] = (mask_mynumbers(v)[:200] if isinstance(v, str) and not _HEX_ID.fullmatch(v)
                  else v)
    return out
