"""Receiving uploads: bytes in, encrypted drop-zone object and a row out.

Security invariants:

* Plaintext never touches a disk.  :class:`IntakeSink` encrypts each chunk
  as it arrives (envelope format of :mod:`storage.envelope`) and hands only
  ciphertext to the drop-zone backend.  It is also the Werkzeug multipart
  stream factory, so form uploads never spool to /tmp.
* Nothing half-received becomes visible.  The drop-zone object is committed
  atomically by the backend only after the last byte; the row is inserted
  after that.  A crash in between leaves an object without a row, which
  :func:`portal.pipeline.reconcile` removes once it is old enough.
* The object key is a generated id, never the user's file name.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from scanners.filetypes import sniff
from storage.envelope import seal

from .audit import Actor, Tag, record
from .models import ClientUser, Purpose, Status, Upload, UploadEvent, utcnow
from .services import Services

SNIFF_BYTES = 8192
READ_CHUNK = 1 << 20


class IntakeError(Exception):
    """An upload was refused.  ``code`` is stable; the UI maps it to words."""

    status = 400

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class UploadTooLargeError(IntakeError):
    status = 413

    def __init__(self) -> None:
        super().__init__("too_large")


def new_upload_id() -> str:
    return secrets.token_hex(16)


def clean_filename(raw: str | None) -> str:
    """A display name safe to store and show: no path, no control characters."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    name = name.lstrip(".") or "upload"
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:200]
    return name


@dataclass(frozen=True)
class Received:
    upload_id: str
    key: str
    size: int
    sha256: str
    sniffed: str


class IntakeSink:
    """A write-only stream that encrypts into a new drop-zone object.

    Call :meth:`finish` to commit, or :meth:`abort` to discard.  Until
    ``finish`` returns nothing is visible in the drop zone.
    """

    def __init__(self, services: Services, max_bytes: int) -> None:
        self.upload_id = new_upload_id()
        self.key = f"dz/{self.upload_id}"
        self._max = max_bytes
        self._size = 0
        self._head = bytearray()
        self._stack = contextlib.ExitStack()
        self._done = False
        writer = self._stack.enter_context(
            services.dropzone.writer(self.key, {"created": str(int(time.time()))})
        )
        self._seal = seal(writer, services.dropzone_key, self.key)

    # -- the file-like surface Werkzeug's multipart parser uses ------------
    def write(self, data: bytes) -> int:
        if self._done:
            raise ValueError("sink is closed")
        self._size += len(data)
        if self._size > self._max:
            self.abort()
            raise UploadTooLargeError()
        if len(self._head) < SNIFF_BYTES:
            self._head += data[: SNIFF_BYTES - len(self._head)]
        self._seal.write(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        # Werkzeug rewinds the container after writing; nothing to rewind here.
        return 0

    def tell(self) -> int:
        return self._size

    def read(self, *_: Any) -> bytes:
        return b""  # the plaintext is gone: only ciphertext exists

    def close(self) -> None:
        # Werkzeug may close file storages at teardown; committing is explicit.
        return None

    # -- explicit outcome ------------------------------------------------------
    def feed(self, stream: Any, chunk: int = READ_CHUNK) -> None:
        while True:
            data = stream.read(chunk)
            if not data:
                return
            self.write(data)

    def finish(self) -> Received:
        if self._done:
            raise ValueError("sink is closed")
        self._seal.close()
        self._stack.close()  # commits the object atomically
        self._done = True
        # The envelope writer hashed the plaintext on the way: one pass only.
        return Received(self.upload_id, self.key, self._size, self._seal.plaintext_sha256,
                        sniff(bytes(self._head)))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        # Leave the writer through an exception path: the backend discards it.
        with contextlib.suppress(_Abort):
            self._stack.__exit__(_Abort, _Abort(), None)

    @property
    def finished(self) -> bool:
        return self._done


class _Abort(Exception):
    pass


def active_purpose(services: Services, code: str | None) -> Purpose:
    with services.sessions() as db:
        purpose = db.get(Purpose, code) if code else None
        if purpose is None or not purpose.active:
            raise IntakeError("invalid_purpose")
        return purpose


def register(
    services: Services,
    received: Received,
    *,
    user: ClientUser,
    filename: str,
    purpose_code: str,
    remote_addr: str | None,
) -> Upload:
    """Insert the row for a committed drop-zone object, audit it, queue the scan.

    An empty file is refused here: its (encrypted) object is deleted and the
    refusal is audited, so nothing is stored for it.
    """
    if received.size == 0:
        services.dropzone.delete(received.key)
        reject(services, user, "empty", remote_addr)
        raise IntakeError("empty")
    with services.sessions() as db, db.begin():
        upload = Upload(
            id=received.upload_id,
            company_id=user.company_id,
            uploaded_by_id=user.id,
            filename=clean_filename(filename),
            purpose_code=purpose_code,
            status=Status.RECEIVED,
            sniffed=received.sniffed,
            size=received.size,
            sha256=received.sha256,
            dropzone_key=received.key,
            # The queued job normally runs at once; past this the reconciler
            # assumes the job was lost and queues it again.
            next_attempt_at=utcnow() + timedelta(minutes=5),
        )
        db.add(upload)
        db.add(UploadEvent(upload_id=upload.id, status=Status.RECEIVED))
        record(db, services.audit_key, Tag.CLIENT_UPLOAD_RECEIVED, client_actor(user),
               company_id=user.company_id, upload_id=upload.id, remote_addr=remote_addr,
               details={"size": received.size, "purpose": purpose_code,
                        "sniffed": received.sniffed})
    services.enqueue.scan(upload.id)
    return upload


def reject(services: Services, user: ClientUser | None, code: str,
           remote_addr: str | None) -> None:
    """Audit a refused upload attempt (nothing was stored)."""
    with services.sessions() as db, db.begin():
        record(db, services.audit_key, Tag.CLIENT_UPLOAD_REJECTED,
               client_actor(user) if user else Actor("anonymous"),
               company_id=user.company_id if user else None,
               remote_addr=remote_addr, details={"reason": code})


def client_actor(user: ClientUser) -> Actor:
    return Actor("client", user.id, user.login)


def receive_stream(
    services: Services,
    chunks: Iterable[bytes] | Any,
    *,
    user: ClientUser,
    filename: str,
    purpose_code: str,
    remote_addr: str | None,
    expected_size: int | None = None,
) -> Upload:
    """Receive a whole upload from a readable stream (API and CLI path).

    ``expected_size`` is the declared Content-Length: a body that ends
    short (the client cancelled, the connection dropped) is discarded and
    refused, never stored as if it were the whole file.
    """
    active_purpose(services, purpose_code)
    sink = IntakeSink(services, services.settings.max_upload_bytes)
    try:
        if hasattr(chunks, "read"):
            sink.feed(chunks)
        else:
            for chunk in chunks:
                sink.write(chunk)
        if expected_size is not None and sink.tell() != expected_size:
            # gunicorn marks its input as terminated, so Werkzeug does not
            # check the length: a dropped connection just ends the body.
            sink.abort()
            reject(services, user, "truncated", remote_addr)
            raise IntakeError("truncated")
        received = sink.finish()
    except UploadTooLargeError:
        reject(services, user, "too_large", remote_addr)
        raise
    except BaseException:
        sink.abort()
        raise
    return register(services, received, user=user, filename=filename,
                    purpose_code=purpose_code, remote_addr=remote_addr)


def list_for_company(services: Services, company_id: int, limit: int = 200) -> list[Upload]:
    with services.sessions() as db:
        rows = db.execute(
            select(Upload).where(Upload.company_id == company_id)
            .order_by(Upload.created_at.desc()).limit(limit)
        ).scalars().all()
        return list(rows)
