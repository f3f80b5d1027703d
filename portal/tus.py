"""Resumable uploads (tus 1.0.0): state, encrypted parts and assembly.

The HTTP side is :mod:`portal.client.tus`; this module holds no Flask code so
that the worker's reconciler can finish and expire uploads too.

Security and safety invariants:

* Plaintext never touches a disk.  Each PATCH body is sealed with the
  drop-zone key as it streams in (:func:`storage.envelope.seal`) into its own
  drop-zone object ``tus/<tus id>/<offset>-<random>`` (generated ids only).
* The offset only advances when a part's object is committed: one
  compare-and-set ``UPDATE … WHERE offset = <start>`` per part, in the same
  transaction as its :class:`TusPart` row.  A PATCH that loses the race (or
  whose upload expired meanwhile) deletes its own object (keys are unique,
  so it never touches another request's part).
* A body that ends early (the connection dropped) keeps what arrived: the
  received prefix is sealed and committed as a shorter part, so the client
  resumes exactly where the server's ``Upload-Offset`` says and re-sends
  nothing (tus 1.0.0: "the Server SHOULD always attempt to store as much of
  the received data as possible").  TLS authenticates every record, so the
  prefix is exactly what the client sent.
* Assembly streams the parts in order through a decrypting reader into an
  ordinary :class:`portal.intake.IntakeSink` and :func:`portal.intake.register`,
  so size, SHA-256, scanning and everything after are those of a normal
  upload.  The tus row is claimed (``upload_id IS NULL`` → the new id) in the
  transaction that inserts the upload, so exactly one assembly wins; a
  crash before that leaves the tus upload complete and finishable (by the
  next PATCH or the reconciler), a crash after it leaves only parts that the
  reconciler deletes.  Memory stays flat: 1 MiB reads, 64 KiB segments.
* Abandoned uploads expire ``EXPIRY`` after their last stored part: the
  reconciler deletes their parts and row and audits it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from storage.envelope import open_envelope, seal
from storage.errors import IntegrityError, ObjectNotFoundError, StorageError

from .audit import SYSTEM, Tag, record
from .faults import checkpoint
from .intake import (
    READ_CHUNK,
    IntakeError,
    IntakeSink,
    active_purpose,
    clean_filename,
    client_actor,
    register,
    reject,
    storage_failure,
)
from .models import ClientUser, TusPart, TusUpload, utcnow
from .models.base import aware_utc
from .services import Services

log = logging.getLogger(__name__)

PREFIX = "tus/"
EXPIRY = timedelta(hours=24)
# Bounds the objects and rows one upload can create (1-byte PATCHes, or a
# connection that drops every few bytes).  8 MiB chunks need 238 parts for
# the largest upload ClamAV can scan.
MAX_PARTS = 2048
# A complete upload nobody assembled (the request died) is finished by the
# reconciler once it has been idle this long.
FINISH_AFTER = timedelta(minutes=10)


class TusError(IntakeError):
    """A tus request was refused; ``code`` is stable, ``status`` the HTTP status."""

    def __init__(self, code: str, status: int = 400) -> None:
        super().__init__(code)
        self.status = status


@dataclass(frozen=True)
class State:
    """What HEAD and PATCH answer: offset, length, expiry, the finished upload."""

    id: str
    offset: int
    length: int
    expires_at: datetime
    upload_id: str | None


def _state(row: TusUpload) -> State:
    return State(row.id, row.offset, row.length, aware_utc(row.expires_at), row.upload_id)


def _expired(row: TusUpload) -> bool:
    return aware_utc(row.expires_at) <= utcnow()


def _now() -> datetime:
    return utcnow()


# -- creation, lookup, termination ---------------------------------------------


def create(services: Services, user: ClientUser, *, length: int, filename: str,
           purpose_code: str, remote_addr: str | None) -> State:
    """A new tus upload for ``user``'s company.

    Raises :class:`TusError`: ``empty`` (length 0), ``too_large`` (413),
    ``bad_filename``, ``invalid_purpose``.  Nothing is stored until a PATCH.
    """
    if length <= 0:
        raise TusError("empty")
    if length > services.settings.max_upload_bytes:
        raise TusError("too_large", 413)
    name = clean_filename(filename) if filename.strip() else ""
    if not name:
        raise TusError("bad_filename")
    try:
        active_purpose(services, purpose_code)
    except IntakeError as exc:
        raise TusError(exc.code) from exc
    now = _now()
    with services.sessions() as db, db.begin():
        row = TusUpload(id=secrets.token_hex(16), company_id=user.company_id, user_id=user.id,
                        filename=name, purpose_code=purpose_code, length=length, offset=0,
                        parts=0, received=0, created_at=now, updated_at=now,
                        expires_at=now + EXPIRY)
        db.add(row)
        record(db, services.audit_key, Tag.TUS_CREATED, client_actor(user),
               company_id=user.company_id, remote_addr=remote_addr,
               details={"tus": row.id, "size": length, "purpose": purpose_code})
        return _state(row)


def lookup(services: Services, company_id: int, tus_id: str) -> State:
    """The upload's state.  ``not_found`` (404) for an unknown id or another
    company's (the one ownership check), ``expired`` (410) once expired."""
    with services.sessions() as db:
        row = db.get(TusUpload, tus_id) if _is_id(tus_id) else None
        if row is None or row.company_id != company_id:
            raise TusError("not_found", 404)
        if _expired(row):
            raise TusError("expired", 410)
        return _state(row)


def terminate(services: Services, user: ClientUser, tus_id: str,
              remote_addr: str | None) -> None:
    """tus termination: delete the row and the parts.  An upload already
    assembled stays (it is an upload like any other); only the tus resource goes.

    The row goes first.  A PATCH still in flight (the browser aborts it just
    before it sends the DELETE) can then no longer commit: its compare-and-set
    finds no row and it deletes its own part.  A part committed before that
    was written before it, so the listing below finds it.  A crash between
    the two leaves parts of an upload that no longer exists; the reconciler
    deletes those (:func:`housekeeping`)."""
    state = lookup(services, user.company_id, tus_id)
    with services.sessions() as db, db.begin():
        keys = db.execute(select(TusPart.key).where(TusPart.tus_id == tus_id)).scalars().all()
        db.execute(delete(TusPart).where(TusPart.tus_id == tus_id))
        db.execute(delete(TusUpload).where(TusUpload.id == tus_id))
        record(db, services.audit_key, Tag.TUS_TERMINATED, client_actor(user),
               company_id=user.company_id, remote_addr=remote_addr,
               details={"tus": tus_id, "offset": state.offset, "size": state.length,
                        "finished": state.upload_id is not None})
    checkpoint("tus:terminated")
    for key in keys:
        services.dropzone.delete(key)
    for key in list(services.dropzone.keys(f"{PREFIX}{tus_id}/")):
        services.dropzone.delete(key)


def _rows(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _is_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


# -- PATCH: one part ---------------------------------------------------------------------


def append(services: Services, user: ClientUser, tus_id: str, *, offset: int,
           stream: Any, content_length: int | None,
           remote_addr: str | None) -> State:
    """Store the bytes of one PATCH body at ``offset``; finish when complete.

    ``content_length`` may be None (chunked body); the body is then read up
    to the remaining length and one byte more is an error.  Raises
    :class:`TusError`: ``not_found`` 404, ``expired`` 410, ``offset_mismatch``
    409, ``exceeds_length`` 413, ``too_many_parts`` 400.  A storage failure
    propagates (nothing is committed; the offset is unchanged).
    """
    state = lookup(services, user.company_id, tus_id)
    if offset != state.offset:
        raise TusError("offset_mismatch", 409)
    remaining = state.length - state.offset
    if content_length is not None and content_length > remaining:
        raise TusError("exceeds_length", 413)
    if state.upload_id is None and remaining == 0:
        _finish_or_discard(services, user, tus_id, remote_addr)
        return lookup(services, user.company_id, tus_id)
    if remaining == 0 or content_length == 0:
        return state
    with services.sessions() as db:
        parts = db.get(TusUpload, tus_id).parts  # type: ignore[union-attr]
    if parts >= MAX_PARTS:
        raise TusError("too_many_parts")
    want = remaining if content_length is None else content_length
    key = f"{PREFIX}{tus_id}/{offset:012d}-{secrets.token_hex(4)}"
    size = _store_part(services, key, stream, want, chunked=content_length is None)
    if size == 0:
        return state
    checkpoint("tus:part_written")
    now = _now()
    with services.sessions() as db, db.begin():
        won = _rows(db.execute(
            update(TusUpload)
            .where(TusUpload.id == tus_id, TusUpload.offset == offset,
                   TusUpload.upload_id.is_(None), TusUpload.expires_at > now)
            .values(offset=TusUpload.offset + size, parts=TusUpload.parts + 1,
                    received=TusUpload.received + size, updated_at=now,
                    expires_at=now + EXPIRY)))
        if won:
            db.add(TusPart(tus_id=tus_id, offset=offset, size=size, key=key, created_at=now))
    if not won:
        # Another PATCH stored these bytes first, or the upload expired or
        # was terminated meanwhile: this copy is not needed.
        services.dropzone.delete(key)
        with services.sessions() as db, db.begin():
            db.execute(update(TusUpload).where(TusUpload.id == tus_id)
                       .values(received=TusUpload.received + size))
        raise TusError("offset_mismatch", 409)
    checkpoint("tus:part_committed")
    if offset + size == state.length:
        _finish_or_discard(services, user, tus_id, remote_addr)
    return lookup(services, user.company_id, tus_id)


def _finish_or_discard(services: Services, user: ClientUser, tus_id: str,
                       remote_addr: str | None) -> None:
    """Assemble; if a part is damaged or missing, the upload can never
    complete: drop it and tell the client (``damaged``, 422) to start again."""
    try:
        finish(services, tus_id, remote_addr=remote_addr)
    except (IntegrityError, ObjectNotFoundError, _Gap) as exc:
        _drop_parts(services, tus_id)
        with services.sessions() as db, db.begin():
            db.execute(delete(TusUpload).where(TusUpload.id == tus_id,
                                               TusUpload.upload_id.is_(None)))
        reject(services, user, "damaged", remote_addr)
        raise TusError("damaged", 422) from exc


class _TooMuch(Exception):
    pass


def _store_part(services: Services, key: str, stream: Any, want: int, *,
                chunked: bool) -> int:
    """Seal up to ``want`` bytes of ``stream`` into object ``key``; return how
    many were stored (0: nothing was stored).  A body that ends early keeps
    the prefix that arrived: the HTTP layer turns a broken connection into
    the end of ``stream``."""
    size = 0
    try:
        with services.dropzone.writer(key, {"created": str(int(time.time()))}) as writer:
            envelope = seal(writer, services.dropzone_key, key)
            while size < want:
                data = stream.read(min(READ_CHUNK, want - size))
                if not data:
                    break
                envelope.write(data)
                size += len(data)
            if chunked and size == want and stream.read(1):
                raise _TooMuch()
            if size == 0:
                raise _Empty()
            envelope.close()
    except _Empty:
        return 0
    except _TooMuch as exc:
        raise TusError("exceeds_length", 413) from exc
    except (OSError, StorageError) as exc:
        # The drop zone failed (full, read-only, unreachable): nothing was
        # committed, the offset stands; 507/503 like any other upload.
        raise storage_failure(exc) from exc
    return size


class _Empty(Exception):
    pass


# -- assembly ----------------------------------------------------------------------


def finish(services: Services, tus_id: str, *, remote_addr: str | None = None) -> str | None:
    """Assemble a complete tus upload into an ordinary upload; return its id.

    Idempotent: an upload already assembled returns its id; an incomplete
    one returns None.  Exactly one concurrent caller wins the claim; the
    others discard their copy.  Parts are deleted once the upload exists.
    """
    with services.sessions() as db:
        row = db.get(TusUpload, tus_id)
        if row is None:
            return None
        if row.upload_id is not None:
            done = row.upload_id
        elif row.offset != row.length:
            return None
        else:
            done = None
        user = db.get(ClientUser, row.user_id)
        parts = db.execute(select(TusPart.offset, TusPart.size, TusPart.key)
                           .where(TusPart.tus_id == tus_id)
                           .order_by(TusPart.offset)).all()
        filename, purpose, length = row.filename, row.purpose_code, row.length
    if done is not None:
        _drop_parts(services, tus_id)
        return done
    if user is None:
        return None
    sink = IntakeSink(services, services.settings.max_upload_bytes, length)
    try:
        _copy_parts(services, parts, length, sink)
        received = sink.finish()
    except (IntegrityError, ObjectNotFoundError, StorageError, _Gap):
        sink.abort()
        # A concurrent assembly may have won and deleted the parts.
        with services.sessions() as db:
            row = db.get(TusUpload, tus_id)
            if row is not None and row.upload_id is not None:
                return row.upload_id
        log.error("tus upload %s could not be assembled (parts damaged or missing)", tus_id)
        raise
    except BaseException:
        sink.abort()
        raise
    checkpoint("tus:assembled")

    def claim(db: Session, upload_id: str) -> None:
        won = _rows(db.execute(update(TusUpload)
                               .where(TusUpload.id == tus_id, TusUpload.upload_id.is_(None))
                               .values(upload_id=upload_id, updated_at=_now())))
        if not won:
            raise _Lost()
        record(db, services.audit_key, Tag.TUS_COMPLETED, client_actor(user),
               company_id=user.company_id, upload_id=upload_id, remote_addr=remote_addr,
               details={"tus": tus_id, "size": length, "parts": len(parts)})

    try:
        upload = register(services, received, user=user, filename=filename,
                          purpose_code=purpose, remote_addr=remote_addr, claim=claim)
    except _Lost:
        services.dropzone.delete(received.key)
        with services.sessions() as db:
            row = db.get(TusUpload, tus_id)
            return row.upload_id if row is not None else None
    checkpoint("tus:registered")
    _drop_parts(services, tus_id)
    return upload.id


class _Lost(Exception):
    pass


class _Gap(Exception):
    pass


def _copy_parts(services: Services, parts: Any, length: int, sink: IntakeSink) -> None:
    expected = 0
    for offset, size, key in parts:
        if offset != expected:
            raise _Gap(f"part at {offset}, expected {expected}")
        got = 0
        with services.dropzone.open(key) as source:
            reader = open_envelope(source, key, unwrapper=services.dropzone_key)
            while data := reader.read(READ_CHUNK):
                sink.write(data)
                got += len(data)
        if got != size:
            raise IntegrityError("a tus part has the wrong size")
        expected += size
    if expected != length:
        raise _Gap(f"{expected} of {length} bytes")


def _drop_parts(services: Services, tus_id: str) -> None:
    """Delete the part objects, then their rows (a crash between leaves rows
    whose objects are gone: deleting is idempotent)."""
    with services.sessions() as db:
        keys = db.execute(select(TusPart.key).where(TusPart.tus_id == tus_id)).scalars().all()
    for key in keys:
        services.dropzone.delete(key)
    # Objects a crash left without a row (written, never committed).
    for key in list(services.dropzone.keys(f"{PREFIX}{tus_id}/")):
        services.dropzone.delete(key)
    with services.sessions() as db, db.begin():
        db.execute(delete(TusPart).where(TusPart.tus_id == tus_id))


# -- housekeeping (the worker's reconciler) ----------------------------------------


@dataclass
class Housekeeping:
    expired: list[str]
    finished: list[str]
    orphans: list[str]


def housekeeping(services: Services, *, orphan_age: float = 3600.0,
                 now: Callable[[], datetime] = _now) -> Housekeeping:
    """Expire abandoned uploads, finish complete ones a request left behind,
    drop parts of assembled ones and delete part objects without a row."""
    out = Housekeeping([], [], [])
    at = now()
    with services.sessions() as db:
        expired = db.execute(select(TusUpload.id).where(TusUpload.expires_at <= at)
                             ).scalars().all()
        stale = db.execute(select(TusUpload.id).where(
            TusUpload.upload_id.is_(None), TusUpload.offset == TusUpload.length,
            TusUpload.updated_at <= at - FINISH_AFTER, TusUpload.expires_at > at)
        ).scalars().all()
        assembled_with_parts = db.execute(
            select(TusUpload.id).join(TusPart, TusPart.tus_id == TusUpload.id)
            .where(TusUpload.upload_id.is_not(None)).distinct()).scalars().all()
        known = set(db.execute(select(TusPart.key)).scalars())
        live = set(db.execute(select(TusUpload.id)).scalars())
    for tus_id in expired:
        _expire(services, tus_id)
        out.expired.append(tus_id)
    for tus_id in stale:
        try:
            if finish(services, tus_id):
                out.finished.append(tus_id)
        except (IntegrityError, ObjectNotFoundError, StorageError, _Gap):
            log.error("tus upload %s is complete but damaged; it will expire", tus_id)
    for tus_id in assembled_with_parts:
        _drop_parts(services, tus_id)
    for key in list(services.dropzone.keys(PREFIX)):
        owner = key.removeprefix(PREFIX).split("/", 1)[0]
        if key in known:
            continue
        # A part written but never committed: harmless while its PATCH may
        # still commit, so wait, unless its upload is gone altogether.
        if owner not in live or _age(services, key) > orphan_age:
            services.dropzone.delete(key)
            out.orphans.append(key)
    return out


def _age(services: Services, key: str) -> float:
    with contextlib.suppress(ObjectNotFoundError):
        try:
            return time.time() - float(services.dropzone.head(key).metadata.get("created", "0"))
        except ValueError:
            return float("inf")
    return 0.0


def _expire(services: Services, tus_id: str) -> None:
    with services.sessions() as db:
        row = db.get(TusUpload, tus_id)
        if row is None:
            return
        company_id, offset, length, done = row.company_id, row.offset, row.length, row.upload_id
    _drop_parts(services, tus_id)
    with services.sessions() as db, db.begin():
        gone = _rows(db.execute(delete(TusUpload).where(TusUpload.id == tus_id)))
        if gone:
            record(db, services.audit_key, Tag.TUS_EXPIRED, SYSTEM, company_id=company_id,
                   details={"tus": tus_id, "offset": offset, "size": length,
                            "finished": done is not None})


__all__ = ["EXPIRY", "MAX_PARTS", "PREFIX", "State", "TusError", "append",
           "create", "finish", "housekeeping", "lookup", "terminate"]
