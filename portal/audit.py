"""The handling log (取扱記録): record events and verify the chain.

Every event is chained: ``hash = HMAC-SHA256(audit_key, canonical(event) +
prev_hash)``.  Editing, deleting, inserting or reordering a row breaks the
chain at that row, and without the audit key a forger cannot recompute the
hashes after it.  ``details`` must never carry file content, file names or
numbers: callers pass ids, sizes, codes only, and :func:`record` refuses any
value that looks like a My Number as a last line of defence.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from .models import AuditEvent, utcnow
from .pii import looks_like_mynumber

GENESIS = "0" * 64


class AuditError(Exception):
    """An audit record could not be written or would leak personal data."""


class Tag(StrEnum):
    """Event names as ``subject:object:action``."""

    CLIENT_LOGIN = "client:session:login"
    CLIENT_LOGIN_FAILED = "client:session:login_failed"
    CLIENT_LOGOUT = "client:session:logout"
    CLIENT_UPLOAD_RECEIVED = "client:upload:received"
    CLIENT_UPLOAD_REJECTED = "client:upload:rejected"
    SCAN_STARTED = "system:scan:started"
    SCAN_CLEAN = "system:scan:clean"
    SCAN_INFECTED = "system:scan:infected"
    SCAN_REFUSED = "system:scan:refused"
    SCAN_DEFERRED = "system:scan:deferred"
    SCAN_DAMAGED = "system:scan:damaged"
    DROPZONE_DELETED = "system:dropzone:deleted"
    RECONCILED = "system:reconcile:repaired"
    OFFICE_LOGIN = "office:session:login"
    OFFICE_LOGIN_FAILED = "office:session:login_failed"
    OFFICE_LOGOUT = "office:session:logout"
    PULL_REQUESTED = "office:vault:pull_requested"
    FILE_VAULTED = "office:file:vaulted"
    FILE_DOWNLOADED = "office:file:downloaded"
    FILE_DOWNLOAD_REFUSED = "office:file:download_refused"
    VAULT_VERIFIED = "office:vault:verified"
    # Resumable uploads (portal/tus.py)
    TUS_CREATED = "client:tus:created"
    TUS_COMPLETED = "client:tus:completed"
    TUS_TERMINATED = "client:tus:terminated"
    TUS_EXPIRED = "system:tus:expired"
    COMPANY_CREATED = "office:company:created"
    CLIENT_USER_CREATED = "office:client_user:created"
    STAFF_CREATED = "office:staff:created"
    TOKEN_CREATED = "office:token:created"
    ACCESS_DENIED = "any:access:denied"
    # accounts and sign-in (actor_kind tells client from staff)
    LOGIN_LOCKED_OUT = "account:session:login_refused_locked"
    ADDRESS_THROTTLED = "account:session:address_throttled"
    ACCOUNT_LOCKED = "account:account:locked"
    ACCOUNT_UNLOCKED = "account:account:unlocked"
    ACCOUNT_DISABLED = "account:account:disabled"
    ACCOUNT_ENABLED = "account:account:enabled"
    ACCOUNT_UPDATED = "account:account:updated"
    TOTP_REUSED = "account:totp:reused"
    TOTP_FAILED = "account:totp:failed"
    TOTP_ENROLLED = "account:totp:enrolled"
    TOTP_RESET = "account:totp:reset"
    RECOVERY_USED = "account:recovery_code:used"
    RECOVERY_REGENERATED = "account:recovery_code:regenerated"
    PASSWORD_CHANGED = "account:password:changed"
    PASSWORD_CHANGE_FAILED = "account:password:change_refused"
    PASSWORD_RESET = "account:password:reset"
    SESSIONS_ENDED = "account:session:ended_others"
    TOKEN_REVOKED = "account:token:revoked"
    POLICY_CHANGED = "office:policy:changed"
    # office operations (issue 4)
    NOTICE_SENT = "system:notice:sent"
    PURPOSE_CREATED = "office:purpose:created"
    PURPOSE_UPDATED = "office:purpose:updated"
    RETENTION_CHANGED = "office:retention:changed"
    DELETION_REQUESTED = "client:deletion:requested"
    DELETION_WITHDRAWN = "client:deletion:withdrawn"
    DISPOSAL_PROPOSED = "office:disposal:proposed"
    DISPOSAL_REFUSED = "office:disposal:refused"
    DISPOSAL_APPROVED = "office:disposal:approved"
    FILE_DISPOSED = "office:file:disposed"
    CERTIFICATE_ISSUED = "office:certificate:issued"
    COMPANY_UPDATED = "office:company:updated"
    STAFF_UPDATED = "office:staff:updated"
    # the handling log itself
    AUDIT_EXPORTED = "office:audit:exported"
    INCIDENT_EXPORTED = "office:incident:exported"
    # reports (issue: ledger and monthly usage report)
    REPORT_GENERATED = "office:report:generated"
    # opening a password-protected upload with its password (issue 6); the
    # password itself is never recorded
    UPLOAD_OPENED = "client:upload:opened_with_password"
    UPLOAD_OPEN_FAILED = "client:upload:open_failed"
    UPLOAD_PROTECTED_DISCARDED = "system:upload:protected_discarded"
    LANGUAGE_CHANGED = "account:language:changed"


@dataclass(frozen=True)
class Actor:
    kind: str  # "client" | "staff" | "system" | "cli"
    id: int | None = None
    label: str = ""

    @classmethod
    def system(cls, label: str = "worker") -> Actor:
        return cls("system", None, label)


SYSTEM = Actor.system()


def _naive_utc(at: datetime) -> datetime:
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at


def canonical(ev: AuditEvent) -> bytes:
    """The bytes the hash covers: every column except id and hash."""
    fields = [
        _naive_utc(ev.at).isoformat(timespec="microseconds"),
        ev.action,
        ev.actor_kind,
        ev.actor_id,
        ev.actor_label,
        ev.company_id,
        ev.upload_id,
        ev.remote_addr,
        ev.details,
        ev.prev_hash,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def _mac(key: bytes, ev: AuditEvent) -> str:
    return hmac.new(key, canonical(ev), hashlib.sha256).hexdigest()


_HEX_ID = re.compile(r"[0-9a-f]{16,64}")


def _check_clean(details: Mapping[str, Any]) -> str:
    for value in details.values():
        # Generated hex ids (key ids, upload ids), alone or in a list, hold a
        # 12-digit run by chance (about one 32-digit id in 80); they are never
        # user data.  Anything else is checked.
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, str) and _HEX_ID.fullmatch(item):
                continue
            if looks_like_mynumber(str(item)):
                # Fail loudly rather than write a number to the log.
                raise AuditError("audit details must not contain 12-digit numbers")
    return json.dumps(dict(details), ensure_ascii=False, sort_keys=True, default=str)


def record(
    db: Session,
    key: bytes,
    action: Tag | str,
    actor: Actor,
    *,
    company_id: int | None = None,
    upload_id: str | None = None,
    remote_addr: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event inside the caller's transaction (commit is theirs).

    The event becomes durable together with the state change it describes.
    """
    if db.get_bind().dialect.name == "postgresql":
        # Serialise appends so two processes never chain onto the same head.
        db.execute(text("SELECT pg_advisory_xact_lock(5810001)"))
    prev = db.execute(
        select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).scalar_one_or_none()
    ev = AuditEvent(
        at=_naive_utc(utcnow()),
        action=str(action),
        actor_kind=actor.kind,
        actor_id=actor.id,
        actor_label=actor.label[:200],
        company_id=company_id,
        upload_id=upload_id,
        remote_addr=remote_addr,
        details=_check_clean(details or {}),
        prev_hash=prev or GENESIS,
    )
    ev.hash = _mac(key, ev)
    db.add(ev)
    db.flush()
    return ev


@dataclass(frozen=True)
class Break:
    event_id: int
    problem: str


def verify(db: Session, key: bytes, batch: int = 5000) -> tuple[int, Break | None]:
    """Walk the chain in id order.  Returns (events checked, first break or None)."""
    prev = GENESIS
    count = 0
    for ev in _iter_events(db, batch):
        if ev.prev_hash != prev:
            return count, Break(ev.id, "previous-hash link does not match (deleted, "
                                       "inserted or reordered event)")
        if not hmac.compare_digest(ev.hash, _mac(key, ev)):
            return count, Break(ev.id, "event content does not match its hash (edited)")
        prev = ev.hash
        count += 1
    return count, None


def _iter_events(db: Session, batch: int) -> Iterator[AuditEvent]:
    last = 0
    while True:
        rows = db.execute(
            select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        db.expunge_all()
