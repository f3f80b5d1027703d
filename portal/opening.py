"""Opening a kept password-protected upload with the password the client typed.

The flow (client app, which holds the drop-zone key):

1. the scan refused the upload as ``encrypted`` and, the office setting
   being on, kept its encrypted drop-zone object until ``unlock_until``
   (:func:`portal.pipeline._finish_rejected`);
2. :func:`open_upload` decrypts that object into memory (at most
   :data:`portal.unlock.MAX_IN_MEMORY`; the digest must match), opens it with
   the password (:func:`portal.unlock.open_protected`) and seals each
   unprotected file into a *new* drop-zone object through the normal intake
   path (:class:`portal.intake.IntakeSink`, :func:`portal.intake.register`):
   a new upload, linked by ``opened_from``, scanned by clamd like any other;
3. the protected original's encrypted copy is deleted, and the opening is
   audited (``client:upload:opened_with_password``: which uploads came out,
   never the password or a file name).

An opening that stopped half-way (the process died, the database went away)
loses nothing: the kept copy stays until its time, the room offers the
password field again, and the next opening registers only the files that did
not come out yet.  A file counts as out when an upload opened from the same
original has the same SHA-256; the check runs again, under a lock on the
original's row, in the transaction that registers each new upload, so two
openings at once (a double click) give each file exactly once.

A wrong password is audited (``client:upload:open_failed``) and counted; the
:data:`~portal.unlock.MAX_ATTEMPTS`-th discards the protected file.  The
reconciler (:func:`expire_kept`) deletes kept copies past their time and
every kept copy once the office turns the setting off.

The password is a local variable of :func:`open_upload` and the function it
calls only: it is never logged, queued, stored or audited.

One opening runs at a time in each client-app process (it holds the file and
what came out of it in memory); another one waits up to
:data:`OPENING_WAIT_S` and is then asked to try again (``busy``, audited, no
attempt counted).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import IntegrityError, ObjectNotFoundError

from .audit import SYSTEM, Actor, Tag, record
from .faults import checkpoint
from .intake import IntakeError, IntakeSink, client_actor, register
from .models import ClientUser, Status, Upload, utcnow
from .models.base import aware_utc
from .pipeline import COPY_CHUNK, _drop_dropzone_copy, _open_dropzone
from .services import Services
from .unlock import MAX_ATTEMPTS, MAX_IN_MEMORY, UnlockError, open_protected, opening_enabled


class WrongPasswordError(UnlockError):
    """The password did not open the file; ``left`` attempts remain (0: discarded)."""

    def __init__(self, left: int) -> None:
        super().__init__("wrong_password" if left else "attempts_exhausted")
        self.left = left


# One opening at a time per process: an opening holds the whole file in memory,
# and what came out of it (at most about twice MAX_IN_MEMORY).  Another one
# waits this long for its turn, then is told to try again.
_ONE_AT_A_TIME = threading.BoundedSemaphore(1)
OPENING_WAIT_S = 30.0


class _AlreadyOut(Exception):
    """Another opening registered this file first (raised inside ``claim``)."""


def _locked(db: Session, upload_id: str) -> Upload:
    """The upload's row, locked for this transaction (PostgreSQL; SQLite's
    transactions already hold the write lock)."""
    row = db.get(Upload, upload_id, with_for_update=True)
    assert row is not None
    return row


def opened_so_far(db: Session, upload_id: str) -> list[tuple[str, str]]:
    """(id, sha256) of the uploads opened from ``upload_id``, oldest first."""
    rows = db.execute(select(Upload.id, Upload.sha256).where(Upload.opened_from == upload_id)
                      .order_by(Upload.created_at, Upload.id)).all()
    return [(str(i), str(d)) for i, d in rows]


def can_open(db: Session, upload: Upload) -> bool:
    """Whether the room may offer the password field for ``upload`` (also after an
    opening that stopped half-way: the next one takes out the rest)."""
    return (upload.status == Status.REFUSED and upload.reason == "encrypted"
            and upload.dropzone_key is not None and upload.unlock_until is not None
            and aware_utc(upload.unlock_until) > utcnow()
            and upload.unlock_attempts < MAX_ATTEMPTS
            and opening_enabled(db))


def attempts_left(upload: Upload) -> int:
    return max(0, MAX_ATTEMPTS - (upload.unlock_attempts or 0))


def open_upload(services: Services, user: ClientUser, upload_id: str, password: str,
                remote_addr: str | None) -> list[str]:
    """Open the caller's kept protected upload; returns the new uploads' ids.

    Raises :class:`UnlockError` (``not_available``, ``too_large``, ``busy``,
    ``damaged``, the opener's codes) or :class:`WrongPasswordError`; every
    failure is audited first.  The caller checks ownership.
    """
    actor = client_actor(user)
    with services.sessions() as db:
        upload = db.get(Upload, upload_id)
        mine = upload is not None and upload.company_id == user.company_id
        available = upload is not None and mine and can_open(db, upload)
        if upload is not None:
            filename, size, sha256 = upload.filename, upload.size, upload.sha256
            purpose_code = upload.purpose_code
    if not available:  # audited outside the read session (one writer at a time)
        _fail(services, actor, upload_id if mine else None, user.company_id,
              "not_available", remote_addr)
        raise UnlockError("not_available")
    if size > MAX_IN_MEMORY:
        _fail(services, actor, upload_id, user.company_id, "too_large", remote_addr)
        raise UnlockError("too_large")
    slot = _ONE_AT_A_TIME
    if not slot.acquire(timeout=OPENING_WAIT_S):
        _fail(services, actor, upload_id, user.company_id, "busy", remote_addr)
        raise UnlockError("busy")  # not a wrong password: no attempt is counted
    try:
        return _open_kept(services, user, actor, upload_id, filename, size, sha256,
                          purpose_code, password, remote_addr)
    finally:
        slot.release()


def _open_kept(services: Services, user: ClientUser, actor: Actor, upload_id: str,
               filename: str, size: int, sha256: str, purpose_code: str, password: str,
               remote_addr: str | None) -> list[str]:
    """:func:`open_upload` once the upload is known to be openable."""
    try:
        data = _read_plaintext(services, upload_id, size, sha256)
    except (IntegrityError, ObjectNotFoundError):
        _fail(services, actor, upload_id, user.company_id, "damaged", remote_addr)
        raise UnlockError("damaged") from None
    try:
        opened = open_protected(data, filename, password)
    except UnlockError as exc:
        if exc.code == "wrong_password":
            left = _wrong_password(services, actor, upload_id, user.company_id, remote_addr)
            raise WrongPasswordError(left) from None
        _fail(services, actor, upload_id, user.company_id, exc.code, remote_addr)
        raise
    finally:
        del data
    items = [item for item in opened if item.data]  # an empty entry: nothing to keep
    del opened
    with services.sessions() as db:
        before = opened_so_far(db, upload_id)
    out = Counter(digest for _id, digest in before)  # files out (earlier openings)
    seen: Counter[str] = Counter()
    for item in items:
        digest = hashlib.sha256(item.data).hexdigest()
        occurrence = seen[digest]  # the n-th file of the original with this digest
        seen[digest] += 1
        if occurrence < out[digest]:
            continue  # came out in an opening that stopped half-way
        _intake(services, user, upload_id, item.filename, item.data, purpose_code,
                remote_addr, digest, occurrence)
        checkpoint("opening:registered")  # tests: the client app dies after each file
    del items
    return _finish_opening(services, actor, upload_id, user.company_id, len(before),
                           seen.total(), remote_addr)


def _finish_opening(services: Services, actor: Actor, upload_id: str, company_id: int,
                    earlier: int, files: int, remote_addr: str | None) -> list[str]:
    """Audit the opening and delete the protected copy, once; returns the new ids."""
    with services.sessions() as db, db.begin():
        row = _locked(db, upload_id)
        new_ids = [i for i, _ in opened_so_far(db, upload_id)]
        finished = row.unlock_until is None
        if not finished:
            row.unlock_until = None
            details: dict[str, Any] = {"opened_into": new_ids, "files": len(new_ids)}
            if earlier:
                details["resumed_after"] = earlier  # files out before this opening
            record(db, services.audit_key, Tag.UPLOAD_OPENED, actor, company_id=company_id,
                   upload_id=upload_id, remote_addr=remote_addr, details=details)
    if finished and len(new_ids) != files:
        # Discarded meanwhile (expired, setting off) before every file was out.
        _fail(services, actor, upload_id, company_id, "not_available", remote_addr)
        raise UnlockError("not_available")
    if not finished:
        _drop_dropzone_copy(services, upload_id)
    return new_ids


def _read_plaintext(services: Services, upload_id: str, size: int, sha256: str) -> bytes:
    """The whole decrypted drop-zone object, in memory; its digest must match."""
    with services.sessions() as db:
        upload = db.get(Upload, upload_id)
        assert upload is not None
        reader = _open_dropzone(services, upload)
    # A BytesIO hands its buffer over as the result (getvalue does not copy it):
    # the file is in memory once, never twice.
    buf = io.BytesIO()
    digest = hashlib.sha256()
    with contextlib.closing(reader):
        for chunk in reader.iter_chunks(COPY_CHUNK):
            buf.write(chunk)
            digest.update(chunk)
            if buf.tell() > min(size, MAX_IN_MEMORY):
                raise IntegrityError("drop-zone object longer than recorded")
    if digest.hexdigest() != sha256:
        raise IntegrityError("drop-zone plaintext differs from the recorded digest")
    return buf.getvalue()


def _intake(services: Services, user: ClientUser, original: str, filename: str, data: bytes,
            purpose_code: str, remote_addr: str | None, digest: str, occurrence: int) -> None:
    """Seal one unprotected file into a new upload (encrypted before it is written).

    Unless another opening of ``original`` registered this file meanwhile (the
    ``occurrence``-th file with SHA-256 ``digest``): its object is then deleted again."""
    sink = IntakeSink(services, services.settings.max_upload_bytes, len(data))
    try:
        for start in range(0, len(data), COPY_CHUNK):
            sink.write(data[start:start + COPY_CHUNK])
        received = sink.finish()
    except BaseException:
        sink.abort()
        raise

    def link(db: Session, new_id: str) -> None:
        # The original's row lock orders openings that run at once (SQLite: the
        # transaction already holds the write lock).
        parent = _locked(db, original)
        twins = db.execute(select(func.count()).select_from(Upload).where(
            Upload.opened_from == original, Upload.sha256 == digest,
            Upload.id != new_id)).scalar_one()
        if parent.unlock_until is None or twins > occurrence:
            raise _AlreadyOut
        row = db.get(Upload, new_id)
        assert row is not None
        row.opened_from = original

    try:
        register(services, received, user=user, filename=filename,
                 purpose_code=purpose_code, remote_addr=remote_addr, claim=link)
    except IntakeError:
        raise
    except _AlreadyOut:
        services.dropzone.delete(received.key)
    except BaseException:
        services.dropzone.delete(received.key)  # with ``claim`` the object is ours
        raise


def _fail(services: Services, actor: Actor, upload_id: str | None, company_id: int,
          code: str, remote_addr: str | None) -> None:
    with services.sessions() as db, db.begin():
        record(db, services.audit_key, Tag.UPLOAD_OPEN_FAILED, actor, company_id=company_id,
               upload_id=upload_id, remote_addr=remote_addr, details={"reason": code})


def _wrong_password(services: Services, actor: Actor, upload_id: str, company_id: int,
                    remote_addr: str | None) -> int:
    """Count one wrong password; the last allowed one discards the file.  Returns
    the attempts left."""
    with services.sessions() as db, db.begin():
        row = _locked(db, upload_id)
        row.unlock_attempts = (row.unlock_attempts or 0) + 1
        left = attempts_left(row)
        record(db, services.audit_key, Tag.UPLOAD_OPEN_FAILED, actor, company_id=company_id,
               upload_id=upload_id, remote_addr=remote_addr,
               details={"reason": "wrong_password", "attempt": row.unlock_attempts,
                        "left": left})
        if left == 0:
            row.unlock_until = None
            record(db, services.audit_key, Tag.UPLOAD_PROTECTED_DISCARDED, SYSTEM,
                   company_id=company_id, upload_id=upload_id, details={"why": "attempts"})
    if left == 0:
        _drop_dropzone_copy(services, upload_id)
    return left


def expire_kept(services: Services, now: datetime | None = None) -> list[str]:
    """Delete kept protected copies that are past their time (even with some files
    out: an opening that stopped half-way and was not finished), or kept while the
    setting is now off.  Audited; returns the upload ids."""
    now = now or utcnow()
    with services.sessions() as db:
        enabled = opening_enabled(db)
        query = select(Upload.id, Upload.unlock_until).where(Upload.unlock_until.is_not(None))
        if enabled:
            query = query.where(Upload.unlock_until <= now.replace(tzinfo=None))
        rows = db.execute(query.limit(500)).all()
    done = []
    for upload_id, _until in rows:
        with services.sessions() as db, db.begin():
            row = db.get(Upload, upload_id, with_for_update=True)
            if row is None or row.unlock_until is None:
                continue
            details: dict[str, Any] = {"why": "expired" if enabled else "setting_off"}
            if out := len(opened_so_far(db, upload_id)):
                details["files_out"] = out  # an opening that stopped half-way
            row.unlock_until = None
            record(db, services.audit_key, Tag.UPLOAD_PROTECTED_DISCARDED, SYSTEM,
                   company_id=row.company_id, upload_id=upload_id, details=details)
        _drop_dropzone_copy(services, upload_id)
        done.append(upload_id)
    return done


__all__: list[Any] = ["WrongPasswordError", "attempts_left", "can_open", "expire_kept",
                      "open_upload", "opened_so_far"]
