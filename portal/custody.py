"""The chain of custody of one upload, as its client company sees it.

Built from the handling log (``AuditEvent`` rows of the upload, in chain
order), not from the upload's status history: every step the office took
with the file is there, with its time.  Only steps a client should see go
in (no sign-ins, no refused attempts, no internal requests), and the
texts are catalogue message ids with plain arguments, so that the web page
and the receipt (受領書) can each show them in their own language:

>>> rows = render(chain_of_custody(db, upload, "ja"), translations.gettext)

A disposal shows who proposed and who approved it and when, never the
reason the office wrote down.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .audit import Tag
from .certificate import N_
from .messages import REASONS
from .models import AuditEvent, ClientUser, Purpose, Staff, Upload


@dataclass(frozen=True)
class Step:
    """One step: ``label`` and ``detail`` are message ids, ``args`` fill ``detail``."""

    at: datetime
    code: str  # received, scan_started, scan_clean, scan_infected, scan_refused, …
    label: str
    who: str = ""  # a person's display name (data, not translated)
    who_system: bool = False  # done by kinko itself: shown as a translated word
    detail: str = ""
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """A step in words: what the page and the receipt print."""

    at: datetime
    code: str
    label: str
    who: str
    detail: str


SYSTEM_WHO = N_("kinko (automatic)")

LABELS = {
    "received": N_("Received"),
    "scan_started": N_("Virus scan started"),
    "scan_clean": N_("Scanned: no virus found"),
    "scan_infected": N_("Virus found"),
    "scan_refused": N_("Not accepted"),
    "vaulted": N_("Moved into the office vault"),
    "dropzone_deleted": N_("Removed from the upload area"),
    "deletion_requested": N_("Deletion requested"),
    "deletion_withdrawn": N_("Deletion request withdrawn"),
    "downloaded": N_("Downloaded by the office"),
    "disposal_proposed": N_("Disposal proposed"),
    "disposal_withdrawn": N_("Disposal proposal withdrawn"),
    "disposed": N_("Disposed"),
}

# The verdict of the scan in words a client understands.
VERDICT_CLEAN = N_("No virus was found.")
VERDICT_INFECTED = N_("A virus was found (%(signature)s). The file did not reach the office.")
VERDICT_PENDING = N_("Not scanned yet.")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def reason_msgid(code: str | None) -> str:
    """The catalogue message id of a refusal reason (``messages.REASONS`` is lazy)."""
    text = REASONS.get(code or "") or REASONS["malformed"]
    args = getattr(text, "_args", None)  # flask_babel.LazyString keeps its msgid here
    return str(args[0]) if args else str(text)


def scan_verdict(upload: Upload) -> tuple[str, dict[str, str]]:
    """(message id, arguments) of the upload's scan result."""
    if upload.status == "infected":
        return VERDICT_INFECTED, {"signature": upload.signature or "—"}
    if upload.status == "refused":
        return reason_msgid(upload.reason), {}
    if upload.status in ("clean", "vaulted", "disposed"):
        return VERDICT_CLEAN, {}
    return VERDICT_PENDING, {}


class _People:
    """Display names of the people in the log, looked up once each."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self.cache: dict[tuple[str, int], str] = {}

    def name(self, ev: AuditEvent) -> str:
        if ev.actor_id is None:
            return ev.actor_label
        key = (ev.actor_kind, ev.actor_id)
        if key not in self.cache:
            person: ClientUser | Staff | None = (
                self.db.get(ClientUser, ev.actor_id) if ev.actor_kind == "client"
                else self.db.get(Staff, ev.actor_id))
            self.cache[key] = (person.display_name or person.login) if person else ""
        return self.cache[key] or ev.actor_label


def _details(ev: AuditEvent) -> dict[str, object]:
    try:
        value = json.loads(ev.details or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def chain_of_custody(db: Session, upload: Upload, lang: str = "ja") -> list[Step]:
    """The client-visible steps of ``upload``, oldest first.

    ``lang`` picks the language of data labels (purposes); the step texts
    are message ids for the caller to translate.
    """
    events = db.execute(select(AuditEvent).where(AuditEvent.upload_id == upload.id)
                        .order_by(AuditEvent.id)).scalars().all()
    people = _People(db)
    purposes: dict[str, str] = {}

    def purpose_label(code: str) -> str:
        if code not in purposes:
            p = db.get(Purpose, code)
            purposes[code] = p.label(lang) if p else code
        return purposes[code]

    def step(ev: AuditEvent, code: str, detail: str = "",
             args: Mapping[str, str] | None = None) -> Step:
        system = ev.actor_kind == "system" or (ev.actor_kind == "cli" and ev.actor_id is None)
        return Step(at=_utc(ev.at), code=code, label=LABELS[code],
                    who="" if system else people.name(ev), who_system=system,
                    detail=detail, args=dict(args or {}))

    steps: list[Step] = []
    for ev in events:
        d = _details(ev)
        match ev.action:
            case Tag.CLIENT_UPLOAD_RECEIVED:
                size = d.get("size", upload.size)
                steps.append(step(ev, "received", N_("SHA-256 %(sha256)s, %(size)s bytes"),
                                  {"sha256": upload.sha256, "size": f"{int(str(size)):,}"}))
            case Tag.SCAN_STARTED:
                steps.append(step(ev, "scan_started"))
            case Tag.SCAN_CLEAN:
                steps.append(step(ev, "scan_clean", VERDICT_CLEAN))
            case Tag.SCAN_INFECTED:
                steps.append(step(ev, "scan_infected", VERDICT_INFECTED,
                                  {"signature": str(d.get("signature") or "—")}))
            case Tag.SCAN_REFUSED | Tag.SCAN_DAMAGED:
                steps.append(step(ev, "scan_refused", reason_msgid(str(d.get("reason", "")))))
            case Tag.FILE_VAULTED:
                steps.append(step(ev, "vaulted", N_(
                    "Encrypted with the office's vault key and checked after writing.")))
            case Tag.DROPZONE_DELETED:
                steps.append(step(ev, "dropzone_deleted", N_(
                    "The encrypted copy in the upload area was deleted.")))
            case Tag.DELETION_REQUESTED:
                steps.append(step(ev, "deletion_requested"))
            case Tag.DELETION_WITHDRAWN:
                steps.append(step(ev, "deletion_withdrawn"))
            case Tag.FILE_DOWNLOADED:
                steps.append(step(ev, "downloaded", N_("Purpose of use: %(purpose)s"),
                                  {"purpose": purpose_label(str(d.get("purpose", "")))}))
            case Tag.DISPOSAL_PROPOSED:
                steps.append(step(ev, "disposal_proposed"))
            case Tag.DISPOSAL_REFUSED if d.get("why") == "withdrawn":
                steps.append(step(ev, "disposal_withdrawn"))
            case Tag.FILE_DISPOSED:
                steps.append(step(ev, "disposed", N_(
                    "The stored data was deleted and its encryption key destroyed.")))
            case _:
                pass  # sign-ins, refused attempts, requests inside the office …
    return steps


def render(steps: list[Step], gettext: Callable[[str], str]) -> list[Row]:
    """The steps in the words of ``gettext`` (flask_babel's or a catalogue's)."""
    rows = []
    for s in steps:
        detail = gettext(s.detail) if s.detail else ""
        if s.args:
            detail = detail % dict(s.args)
        rows.append(Row(at=s.at, code=s.code, label=gettext(s.label),
                        who=gettext(SYSTEM_WHO) if s.who_system else s.who, detail=detail))
    return rows


__all__ = ["Row", "Step", "chain_of_custody", "reason_msgid", "render", "scan_verdict"]
