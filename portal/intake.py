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

Each chunk also goes to clamd as it arrives (:mod:`portal.receiptscan`), so
the scan is under way when the last byte lands; the worker still decides.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scanners.filetypes import sniff
from storage.envelope import seal
from storage.errors import StorageError

from .audit import Actor, Tag, record
from .models import ClientUser, Purpose, Status, Upload, UploadEvent, utcnow
from .receiptscan import ReceiptScan
from .services import Services

SNIFF_BYTES = 8192
READ_CHUNK = 64 << 10  # per read of the body: gunicorn copies it 2-3 times, and up to
# PIPELINE_DEPTH reads wait for the sealing thread (web RSS, docs/performance.md)
PIPELINE_DEPTH = 4  # chunks read ahead of the sealing thread (memory: 4 x READ_CHUNK)


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


class StorageFullError(IntakeError):
    """The drop zone has no room left (ENOSPC, quota): 507, nothing kept."""

    status = 507

    def __init__(self) -> None:
        super().__init__("storage_full")


class StorageUnavailableError(IntakeError):
    """The drop zone refused the write (read-only, unreachable): 503, nothing kept."""

    status = 503

    def __init__(self) -> None:
        super().__init__("storage_unavailable")


def storage_failure(exc: BaseException) -> IntakeError:
    """The refusal a failed drop-zone write maps to (never a 500)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageFullError()
    return StorageUnavailableError()


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
    # The stream to clamd started while receiving (None: not scanned on receipt).
    scan: ReceiptScan | None = None


class IntakeSink:
    """A write-only stream that encrypts into a new drop-zone object.

    Call :meth:`finish` to commit, or :meth:`abort` to discard.  Until
    ``finish`` returns nothing is visible in the drop zone.

    The work on each chunk (SHA-256, AES-GCM, the write, the copy to clamd)
    runs in a thread of its own, at most ``PIPELINE_DEPTH`` chunks behind the
    request thread, so that it overlaps reading (and TLS-decrypting) the next
    chunk; both release the GIL for their heavy parts.  A failure there is
    raised by the next :meth:`write` or by :meth:`finish`.
    """

    def __init__(self, services: Services, max_bytes: int,
                 size_hint: int | None = None) -> None:
        """``size_hint``: the declared length of the request (an upper bound of
        the file's size), if known; the scan while receiving may then keep the
        file in a memory file for clamd (:mod:`portal.receiptscan`)."""
        self.upload_id = new_upload_id()
        self.key = f"dz/{self.upload_id}"
        self._max = max_bytes
        self._size = 0
        self._head = bytearray()
        self._stack = contextlib.ExitStack()
        self._done = False
        self._queue: queue.Queue[bytes | None] = queue.Queue(PIPELINE_DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        try:
            writer = self._stack.enter_context(
                services.dropzone.writer(self.key, {"created": str(int(time.time()))})
            )
            # Sealing may call KMS (storage.kms): refused or unreachable is
            # a storage failure too, answered 503, never a 500.
            self._seal = seal(writer, services.dropzone_key, self.key, hash_ciphertext=False)
        except (OSError, StorageError) as exc:
            self._stack.close()
            raise storage_failure(exc) from exc
        if size_hint is not None and not 0 < size_hint <= max_bytes:
            size_hint = None  # refused further on, or nothing: stream if anything
        self._scan = ReceiptScan.start(services, size_hint)

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
        self._raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name="kinko-intake",
                                            daemon=True)
            self._thread.start()
        # bytes are immutable: the caller cannot change what is still queued.
        self._queue.put(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def _pump(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the request thread raises it
            try:
                self._seal.write(data)
            except BaseException as exc:  # noqa: BLE001 - handed to the request thread
                self._error = exc
                continue
            if self._scan is not None:
                self._scan.feed(data)

    def _stop_pump(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            # The C heap this churned through goes back to the OS after the
            # response (portal.gunicorn_conf.post_request).

    def _raise_failure(self) -> None:
        """The pump's failure, as the refusal the client gets (nothing kept)."""
        exc = self._error
        if exc is None:
            return
        self.abort()  # the backend drops its partial write
        if isinstance(exc, (OSError, StorageError)):
            raise storage_failure(exc) from exc
        raise exc

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
        self._stop_pump()
        self._raise_failure()
        scan = self._scan
        if scan is not None:
            # Everything is sent: clamd scans while the object is committed
            # and the row written (its answer is recorded only for a row).
            scan.finish(self.upload_id, self._size)
            if scan.until is None:  # no verdict can follow (``live`` would race
                scan = None  # with a verdict that is already in)
        try:
            self._seal.close()
            self._stack.close()  # commits the object atomically
        except (OSError, StorageError) as exc:
            self.abort()
            raise storage_failure(exc) from exc
        self._done = True
        # The envelope writer hashed the plaintext on the way: one pass only.
        return Received(self.upload_id, self.key, self._size, self._seal.plaintext_sha256,
                        sniff(bytes(self._head)), scan)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._stop_pump()
        if self._scan is not None:
            self._scan.cancel()
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
    claim: Callable[[Session, str], None] | None = None,
) -> Upload:
    """Insert the row for a committed drop-zone object, audit it, queue the scan.

    An empty file is refused here: its (encrypted) object is deleted and the
    refusal is audited, so nothing is stored for it.  ``claim(db, upload_id)``
    runs inside the inserting transaction (after the row is flushed); if it
    raises, nothing is committed and the caller owns the object (tus assembly
    uses it to turn exactly one assembled object into the upload).
    """
    if received.size == 0:
        if received.scan is not None:
            received.scan.cancel()
        services.dropzone.delete(received.key)
        reject(services, user, "empty", remote_addr)
        raise IntakeError("empty")
    try:
        upload = _insert_row(services, received, user=user, filename=filename,
                             purpose_code=purpose_code, remote_addr=remote_addr, claim=claim)
    except BaseException:
        if received.scan is not None:
            received.scan.cancel()
        # No row (the database is locked or down): the stored object must not
        # outlive the request.  If this delete fails too, the reconciler
        # removes the orphan once it is KINKO_ORPHAN_AGE_SECONDS old.  (With
        # ``claim`` the caller owns the object, as documented above.)
        if claim is None:
            with contextlib.suppress(Exception):
                services.dropzone.delete(received.key)
        raise
    services.enqueue.scan(upload.id)
    if received.scan is not None:
        received.scan.registered()
    return upload


def _insert_row(services: Services, received: Received, *, user: ClientUser, filename: str,
                purpose_code: str, remote_addr: str | None,
                claim: Callable[[Session, str], None] | None) -> Upload:
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
        if received.scan is not None:
            upload.prescan, upload.prescan_until = "pending", received.scan.until
        db.add(upload)
        db.add(UploadEvent(upload_id=upload.id, status=Status.RECEIVED))
        if claim is not None:
            db.flush()
            claim(db, upload.id)
        record(db, services.audit_key, Tag.CLIENT_UPLOAD_RECEIVED, client_actor(user),
               company_id=user.company_id, upload_id=upload.id, remote_addr=remote_addr,
               details={"size": received.size, "purpose": purpose_code,
                        "sniffed": received.sniffed})
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
    sink = IntakeSink(services, services.settings.max_upload_bytes, expected_size)
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
