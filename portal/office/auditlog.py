"""The handling log for managers: search, export, incident export.

Managers only (:func:`manager_required`: anyone else gets the generic 403,
audited).  Searching reads; every export is itself recorded
(``office:audit:exported``, ``office:incident:exported``) before its first
byte leaves, with the filters (digit runs masked) and the number of events.
An export covers the log up to the newest event at the moment it was asked
for, so the file agrees with the count recorded for it.

Exports are streamed: events are read in keyset batches, each batch in its
own short transaction (:func:`portal.auditexport.iter_events`), so a slow
download never holds SQLite's write lock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Flask, Response, flash, render_template, request
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import auditexport as ax
from ..audit import Tag, record
from ..models import AuditEvent, Company
from ..web.base import remote_addr, services
from .admin import actor, manager_required
from .views import JST, page_arg, parse_day

PAGE = 100  # events per page
_TEXT_MAX = 200


def _parse_clock(raw: str | None) -> time | None:
    """``HH:MM`` (24 h) or None."""
    if not raw or len(raw) != 5:
        return None
    try:
        return time.fromisoformat(raw)
    except ValueError:
        return None


def _utc(day: date, clock: time | None) -> datetime:
    """A JST day (and clock time) as the naive UTC the database stores."""
    return datetime.combine(day, clock or time(), JST).astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class LogFilters:
    """Search filters from a query string or form; unusable values are dropped."""

    actor: str = ""
    company: Company | None = None
    action: str = ""
    upload: str = ""
    addr: str = ""
    day_from: date | None = None
    time_from: time | None = None
    day_to: date | None = None
    time_to: time | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str], companies: Sequence[Company]) -> LogFilters:
        def text(name: str) -> str:
            return (args.get(name) or "").strip()[:_TEXT_MAX]

        code = args.get("company") or ""
        return cls(actor=text("actor"),
                   company=next((c for c in companies if c.code == code), None),
                   action=text("action")[:64], upload=text("upload")[:64], addr=text("addr")[:64],
                   day_from=parse_day(args.get("from")),
                   time_from=_parse_clock(args.get("from_time")),
                   day_to=parse_day(args.get("to")), time_to=_parse_clock(args.get("to_time")))

    @property
    def since(self) -> datetime | None:
        return _utc(self.day_from, self.time_from) if self.day_from else None

    @property
    def until(self) -> datetime | None:
        """Exclusive.  A day without a time includes the whole day."""
        if self.day_to is None:
            return None
        if self.time_to is None:
            return _utc(self.day_to + timedelta(days=1), None)
        return _utc(self.day_to, self.time_to)

    def args(self) -> dict[str, str]:
        """The query string that reproduces these filters."""
        out = {"actor": self.actor, "company": self.company.code if self.company else "",
               "action": self.action, "upload": self.upload, "addr": self.addr,
               "from": self.day_from.isoformat() if self.day_from else "",
               "from_time": self.time_from.strftime("%H:%M") if self.time_from else "",
               "to": self.day_to.isoformat() if self.day_to else "",
               "to_time": self.time_to.strftime("%H:%M") if self.time_to else ""}
        return {k: v for k, v in out.items() if v}

    @property
    def action_only(self) -> bool:
        """No filter but the action (whatever its value)."""
        return not (self.actor or self.company or self.upload or self.addr
                    or self.day_from or self.day_to)

    def conditions(self, max_id: int | None = None) -> list[Any]:
        return ax.conditions(
            since=self.since, until=self.until, actor=self.actor or None,
            company_id=self.company.id if self.company else None, action=self.action or None,
            upload_id=self.upload or None, addr=self.addr or None, max_id=max_id)

    def query(self, max_id: int | None = None) -> Any:
        return select(AuditEvent).where(*self.conditions(max_id))

    def for_audit(self) -> dict[str, Any]:
        return ax.filters_for_audit({
            "actor": self.actor, "company": self.company.code if self.company else "",
            "action": self.action, "upload_id": self.upload, "addr": self.addr,
            "from": ax.iso_utc(self.since) if self.since else "",
            "to": ax.iso_utc(self.until) if self.until else ""})


# Matches counted at most (200 pages of 50): a count costs what it visits, and a
# search matching a large share of a million events would otherwise pay for all of
# them on every page.  Beyond it the page says "10,000 or more"; the exports count
# and contain everything.
COUNT_CAP = 10_000


@dataclass
class LogPage:
    items: list[AuditEvent]
    number: int
    total: int  # at most COUNT_CAP
    pages: int
    more: bool = False  # more than COUNT_CAP matches: narrow the search or export


def log_page(db: Session, f: LogFilters, number: int, size: int = PAGE) -> LogPage:
    """One page, newest first: a COUNT (up to ``COUNT_CAP``) plus LIMIT/OFFSET,
    never every row; pages go as deep as the cap.

    Searched by action alone, the page is found by :func:`ax.newest_ids_by_action`
    (each action under the prefix read newest first from ``ix_audit_action``,
    merged) and then loaded by id: the prefix may match a large share of the
    log, and ``ORDER BY id`` over its index range would read and sort all of
    it.  With another filter as well, the query is left to the database, which
    picks an index per filter (tests/unit/portal/test_query_plans.py).
    """
    stmt = f.query()
    found = db.execute(select(func.count()).select_from(
        stmt.with_only_columns(AuditEvent.id).limit(COUNT_CAP + 1).subquery())).scalar_one()
    more = found > COUNT_CAP
    total = min(found, COUNT_CAP)
    pages = max(1, math.ceil(total / size))
    number = min(number, pages)
    offset = (number - 1) * size
    if f.action and f.action_only:
        ids = ax.newest_ids_by_action(db, f.conditions(), f.action, size, offset)
        items = ax.events_by_id(db, ids)
    else:
        items = list(db.execute(stmt.order_by(AuditEvent.id.desc())
                                .limit(size).offset(offset)).scalars())
    return LogPage(items, number, total, pages, more)


def _companies(db: Session) -> list[Company]:
    return list(db.execute(select(Company).order_by(Company.code)).scalars())


def _stamp() -> str:
    return datetime.now(JST).strftime("%Y%m%d-%H%M%S")


def _streamed(chunks: Iterator[bytes], mimetype: str, filename: str) -> Response:
    resp = Response(chunks, mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp


def init(app: Flask) -> None:
    app.add_template_global(ax.jst_text, "audit_jst")

    @app.route("/audit")
    @manager_required
    def audit_log() -> Any:
        svc = services()
        with svc.reader() as db:
            companies = _companies(db)
            filters = LogFilters.from_args(request.args, companies)
            page = log_page(db, filters, page_arg(request.args.get("page")))
            names = {c.id: c.code for c in companies}
        return render_template("office/audit/log.html", page=page, events=page.items,
                               filters=filters, companies=companies, company_codes=names,
                               tags=sorted(t.value for t in Tag))

    def _export(fmt: str) -> Response:
        svc = services()
        with svc.sessions() as db, db.begin():
            filters = LogFilters.from_args(request.args, _companies(db))
            max_id = ax.last_id(db)
            stmt = filters.query(max_id)
            count = db.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
            # Recorded before the first byte leaves, like a file download.
            record(db, svc.audit_key, Tag.AUDIT_EXPORTED, actor(), remote_addr=remote_addr(),
                   details={"format": fmt, "events": count, "last_event_id": max_id,
                            **filters.for_audit()})

        def body() -> Iterator[bytes]:
            with svc.sessions() as rdb:
                events = ax.iter_events(rdb, stmt)
                yield from ax.iter_csv(events) if fmt == "csv" else ax.iter_jsonl(events)

        if fmt == "csv":
            return _streamed(body(), "text/csv; charset=utf-8", f"audit-{_stamp()}.csv")
        return _streamed(body(), "application/x-ndjson; charset=utf-8",
                         f"audit-{_stamp()}.jsonl")

    @app.route("/audit/export.csv")
    @manager_required
    def audit_export_csv() -> Any:
        return _export("csv")

    @app.route("/audit/export.jsonl")
    @manager_required
    def audit_export_jsonl() -> Any:
        return _export("jsonl")

    @app.route("/audit/incident", methods=["GET", "POST"])
    @manager_required
    def audit_incident() -> Any:
        svc = services()
        with svc.sessions() as db:
            companies = _companies(db)
        if request.method == "GET":
            now = datetime.now(JST)
            defaults = {"from": now.date().isoformat(),
                        "from_time": (now - timedelta(hours=1)).strftime("%H:%M"),
                        "to": now.date().isoformat(), "to_time": now.strftime("%H:%M")}
            if (now - timedelta(hours=1)).date() != now.date():
                defaults["from"] = (now - timedelta(hours=1)).date().isoformat()
            return render_template("office/audit/incident.html", companies=companies,
                                   form={**defaults, **request.args.to_dict()})
        filters = LogFilters.from_args(request.form, companies)
        since, until = filters.since, filters.until
        if since is None or until is None or until <= since:
            flash(_("Please enter the start and the end of the period; the end must be "
                    "after the start."), "error")
            return render_template("office/audit/incident.html", companies=companies,
                                   form=request.form), 400
        company_id = filters.company.id if filters.company else None
        with svc.sessions() as db:
            inc = ax.incident(db, since, until, actor=filters.actor or None,
                              company_id=company_id, addr=filters.addr or None)
        with svc.sessions() as db, db.begin():
            record(db, svc.audit_key, Tag.INCIDENT_EXPORTED, actor(),
                   remote_addr=remote_addr(),
                   details={"events": inc.total, "uploads": len(inc.uploads),
                            "companies": len(inc.companies), "last_event_id": inc.max_id,
                            **ax.filters_for_audit({
                                "actor": filters.actor, "addr": filters.addr,
                                "company": filters.company.code if filters.company else "",
                                "from": ax.iso_utc(since), "to": ax.iso_utc(until)})})

        def body() -> Iterator[bytes]:
            with svc.sessions() as rdb:
                yield from ax.iter_incident_zip(dataclasses.replace(inc, db=rdb))

        return _streamed(body(), "application/zip", f"incident-{_stamp()}.zip")
