"""Scan and vault: what happens to an upload after it was received.

Every function here is idempotent and safe to re-run after a crash at any
line; the database row is the single source of truth and each step is a
compare-and-set on its status.

Scan (worker) is one decrypting pass over the drop-zone object.  Each chunk
goes to clamd (INSTREAM; unless the client app streamed the upload to clamd
while receiving it, portal.receiptscan: then its recorded answer is taken for
these bytes, see ``_Prescan``), to the plaintext SHA-256, to the CSV NUL check, and
into a *staged* vault object ``staging/<id>.<attempt>``: sealed to the vault
*public* key under a fresh data key, for the object id ``vault/<id>.<attempt>``.
While clamd scans what it was sent, a thread closes the staged object (fsync,
atomic commit) and reads it back (``_read_back``: its ciphertext digest, and
every segment decrypted with the data key still in memory).  The
check-digit report of a csv/xlsx/ods runs at the same time in another thread.
Only clamd's exact ``stream: OK`` commits ``clean`` and, in the same
transaction, the staged key, its wrapped data key and ciphertext digest
(``staged_*``); every other outcome deletes the staged object.  Checkpoints:
``scan:streaming``, ``scan:staged``, ``scan:verdict``, ``scan:committed``.

Pull (drop zone → vault) is copy → verify → commit → delete:

1. copy: with a staged copy, its sealed bytes are copied to
   ``vault/<id>.<attempt>`` inside the vault backend (promotion,
   ``Storage.duplicate``: a hard link on disk, a server-side copy on S3);
   without one (or if it is unusable), the drop-zone object is
   decrypted and re-encrypted to the vault public key under a fresh data key
   at a new attempt key;
2. verify: read the copy back (promotion: its ciphertext digest, except for a
   hard link of a staged object that this same job read back moments ago;
   fresh copy: ``_read_back``, after the sealer's plaintext digest was checked
   against the digest recorded at upload);
3. commit ``vaulted`` + the wrapped data key, only if the row is still
   ``clean`` (a concurrent pull that lost the race deletes its own copy);
4. delete the drop-zone object, then any stale attempt and staged objects.

A crash before 3 leaves the upload ``clean`` with its drop-zone object (the
pull can be repeated; stale attempts are removed when one commits); a crash
after 3 leaves it ``vaulted`` and re-running finishes steps 4.  Never
neither, never two vault copies once it converges.  A staged copy shares its
data key with the vault object promoted from it, and that key exists only
wrapped in the row: disposal's crypto-shredding covers both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast
from zoneinfo import ZoneInfo

from sqlalchemy import CursorResult, select, update

from scanners.clamd import ScanResult
from scanners.errors import ScannerError, ScannerUnavailableError
from scanners.filetypes import check_file
from storage.envelope import EnvelopeReader, open_envelope, seal
from storage.errors import IntegrityError, ObjectNotFoundError, StorageError

from .audit import SYSTEM, Actor, Tag, record
from .faults import checkpoint
from .models import PENDING_SCAN, Company, Purpose, Status, Upload, UploadEvent, utcnow
from .models.base import aware_utc
from .services import Services

if TYPE_CHECKING:
    from scanners.numbers_scan import NumberReport
from .unlock import KEEP_FOR, opening_enabled

log = logging.getLogger(__name__)
COPY_CHUNK = 1 << 20
JST = ZoneInfo("Asia/Tokyo")


class PipelineError(Exception):
    """A pipeline step cannot run on this upload (``code`` says why)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class ScanOutcome:
    status: str
    retry_in: float | None = None
    auto_pull: bool = False
    # The staged vault copy this run wrote and read back (None: none, or not usable).
    staged_key: str | None = None


def _transition(db: Any, upload: Upload, status: Status) -> None:
    upload.status = status
    db.add(UploadEvent(upload_id=upload.id, status=status))


def _open_dropzone(services: Services, upload: Upload) -> EnvelopeReader:
    assert upload.dropzone_key
    source = services.dropzone.open(upload.dropzone_key)
    return open_envelope(source, upload.dropzone_key, unwrapper=services.dropzone_key)


# -- scan ------------------------------------------------------------------

def scan_upload(services: Services, upload_id: str, *,
                pull_inline: bool = False) -> ScanOutcome:
    """Type policy, then clamd.  Only an explicit clean verdict makes it clean.

    One decrypting pass feeds clamd, the plaintext digest, the CSV NUL check
    and a *staged* vault object (sealed to the vault public key under a fresh
    data key, ``staging/<id>.<attempt>``).  The staged object is recorded with
    the clean verdict, in the same transaction; on any other outcome it is
    deleted.  Returns the outcome; ``retry_in`` is set when the scanner was
    unavailable and the upload stays ``scanning``.  With ``pull_inline`` an
    ``auto_pull`` company's upload is pulled here instead of by another job.
    """
    lease = services.settings.scan_lease_seconds
    with services.sessions() as db, db.begin():
        # FOR UPDATE: two workers handed the same job claim it one at a time.
        upload = db.get(Upload, upload_id, with_for_update=True)
        if upload is None:
            raise PipelineError("not_found")
        if upload.status not in PENDING_SCAN:
            return ScanOutcome(upload.status)
        now = utcnow()
        if upload.lease_until is not None and aware_utc(upload.lease_until) > now:
            log.info("scan of %s is leased by another worker; skipped", upload_id)
            return ScanOutcome(upload.status)
        # The lease, renewed by the heartbeat below while this scan runs.  If
        # this worker dies, it expires and the reconciler re-queues the scan.
        upload.lease_until = upload.next_attempt_at = now + timedelta(seconds=lease)
        if upload.status == Status.RECEIVED:
            _transition(db, upload, Status.SCANNING)
            record(db, services.audit_key, Tag.SCAN_STARTED, SYSTEM,
                   company_id=upload.company_id, upload_id=upload.id)
        filename, size, expected = upload.filename, upload.size, upload.sha256
        attempts = upload.scan_attempts
        prescan = _Prescan(upload.prescan, upload.prescan_until)

    stage = _Stage(services, upload_id)
    try:
        with _Heartbeat(services, upload_id, lease):
            verdict, result = _inspect(services, upload_id, filename, size, expected, stage,
                                       prescan)
    except ScannerUnavailableError as exc:
        stage.discard()
        return _defer(services, upload_id, attempts, type(exc).__name__)
    except (IntegrityError, ObjectNotFoundError):
        stage.discard()
        log.error("drop-zone object of upload %s is damaged or missing", upload_id)
        return _finish_rejected(services, upload_id, Status.REFUSED, "damaged", None,
                                Tag.SCAN_DAMAGED)
    except BaseException:
        stage.discard()
        raise
    if verdict is not None:
        stage.discard()
        return _finish_rejected(services, upload_id, Status.REFUSED, verdict, None,
                                Tag.SCAN_REFUSED)
    assert result is not None
    if result.verdict == "clean":
        outcome = _finish_clean(services, upload_id, stage, on_receipt=prescan.used)
        if outcome.auto_pull:
            if pull_inline:
                _pull_inline(services, upload_id, outcome.staged_key)
            else:
                services.enqueue.pull(upload_id, None)
        return outcome
    stage.discard()
    status = Status.INFECTED if result.verdict == "infected" else Status.REFUSED
    tag = Tag.SCAN_INFECTED if status == Status.INFECTED else Tag.SCAN_REFUSED
    return _finish_rejected(services, upload_id, status, result.reason or "malware",
                            result.signature, tag, on_receipt=prescan.used)


class _Prescan:
    """The client app's scan while receiving (portal.receiptscan), as the worker sees it."""

    def __init__(self, state: str | None, until: datetime | None) -> None:
        # ``failed`` (or never tried): nothing to wait for, the worker scans.
        self.expected = state is not None and state != "failed"
        self.until = aware_utc(until) if until is not None else None
        self.used = False

    def wait(self, services: Services, upload_id: str) -> ScanResult | None:
        """clamd's answer recorded by the client app, or None (scan yourself).

        Waits while it is ``pending``, at most until ``prescan_until``."""
        pause = 0.02
        while True:
            with services.reader() as db:
                row = db.execute(select(Upload.prescan, Upload.prescan_reason,
                                        Upload.prescan_signature)
                                 .where(Upload.id == upload_id)).one_or_none()
            state = row[0] if row is not None else None
            if row is not None and state in ("clean", "infected", "refused"):
                self.used = True
                return ScanResult(cast(Any, state), row[2], row[1])
            if state != "pending" or self.until is None or utcnow() >= self.until:
                if state == "pending":
                    log.info("no answer from the scan while receiving %s; scanning", upload_id)
                return None
            time.sleep(pause)
            pause = min(pause * 1.25, 0.25)


class _Heartbeat:
    """Renews a scan's lease every third of its length while the scan runs."""

    def __init__(self, services: Services, upload_id: str, lease: float) -> None:
        self._services = services
        self._upload_id = upload_id
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"lease-{upload_id[:8]}")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                with self._services.sessions() as db, db.begin():
                    until = utcnow() + timedelta(seconds=self._lease)
                    db.execute(update(Upload).where(
                        Upload.id == self._upload_id, Upload.status == Status.SCANNING,
                        Upload.lease_until.is_not(None)).values(
                            lease_until=until, next_attempt_at=until))
            except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                log.warning("could not renew the scan lease of %s", self._upload_id)


def _pull_inline(services: Services, upload_id: str, staged_key: str | None) -> None:
    """The auto-pull of a clean upload, in the scan job (one queue hop less)."""
    try:
        pull_upload(services, upload_id, SYSTEM, staged_just_verified=staged_key)
    except PipelineError as exc:
        log.info("pull of %s skipped: %s", upload_id, exc.code)
    except (StorageError, OSError) as exc:
        # Nothing is lost (the drop-zone copy stays until a verified commit):
        # the pull job retries it later.
        log.warning("inline pull of %s failed (%s); queued", upload_id, type(exc).__name__)
        services.enqueue.pull(upload_id, None)


class _Stage:
    """The staged vault object written during the scan pass.

    Sealed to the vault *public* key (the worker cannot open it) under a fresh
    data key, with object id ``vault/<id>.<attempt>`` so that promotion is a
    byte copy.  Anything that goes wrong here only drops the staging (the pull
    then copies from the drop zone as before); it never changes a verdict.
    Finishing (final segment, fsync, read-back with the in-memory data key)
    runs in a thread while clamd scans what it was sent.
    """

    def __init__(self, services: Services, upload_id: str) -> None:
        self._services = services
        attempt = secrets.token_hex(8)
        self.key = f"staging/{upload_id}.{attempt}"
        self.oid = f"vault/{upload_id}.{attempt}"
        self._cm: Any = None
        self._out: Any = None
        self._sealed: Any = None
        self.failed = False
        self._done = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.wrapped_key = b""
        self.ciphertext_sha256 = ""

    def write(self, chunk: bytes) -> None:
        if self.failed:
            return
        try:
            if self._sealed is None:
                self._cm = self._services.vault.writer(
                    self.key, {"created": str(int(time.time()))})
                self._out = self._cm.__enter__()
                # No plaintext digest here: _inspect hashes the very chunks it
                # hands to write() and checks them against the recorded digest.
                self._sealed = seal(self._out, self._services.vault_public, self.oid,
                                    embed_key=False, hash_plaintext=False)
            self._sealed.write(chunk)
        except (StorageError, OSError, ValueError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        log.warning("staging a vault copy failed (%s); the pull will copy instead",
                    type(exc).__name__)
        self.failed = True
        if self._cm is not None:
            with contextlib.suppress(Exception):
                self._cm.__exit__(type(exc), exc, None)
            self._cm = None

    def finish_async(self, expected_sha256: str, size: int) -> None:
        """Close, commit and verify the staged object in a thread."""
        if self.failed or self._sealed is None:
            self.failed = True
            return

        def run() -> None:
            try:
                self._finish(expected_sha256, size)
            except BaseException as exc:  # noqa: BLE001 - handed to wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="kinko-stage", daemon=True)
        self._thread.start()

    def _finish(self, expected_sha256: str, size: int) -> None:
        sealed, cm = self._sealed, self._cm
        try:
            sealed.close()
        except (StorageError, OSError, ValueError) as exc:
            self._fail(exc)
            return
        self._cm = None
        cm.__exit__(None, None, None)  # fsync + atomic commit
        checkpoint("scan:staged")
        if sealed.plaintext_size != size:
            raise IntegrityError("staged plaintext differs from the recorded size")
        _read_back(self._services, self.key, sealed.data_key, size, sealed.ciphertext_sha256,
                   oid=self.oid)
        self.wrapped_key = sealed.wrapped_key
        self.ciphertext_sha256 = sealed.ciphertext_sha256
        self._sealed = None  # the data key goes with it
        self._done = True

    def wait(self) -> bool:
        """True when the staged object is written and verified."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                log.warning("staged vault copy of %s not usable (%s); the pull will copy "
                            "instead", self.key, type(self._error).__name__)
                self._error = None
                self.failed = True
        if self.failed or not self._done:
            self.discard()
            return False
        return True

    def discard(self) -> None:
        """Delete the staged object, whatever state it is in.  Idempotent."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._cm is not None:
            err = IntegrityError("staging discarded")
            with contextlib.suppress(Exception):
                self._cm.__exit__(IntegrityError, err, None)
            self._cm = None
        self._sealed = None
        self._done = False
        self.failed = True
        with contextlib.suppress(StorageError, OSError):
            self._services.vault.delete(self.key)


def _inspect(services: Services, upload_id: str, filename: str, size: int,
             expected_sha256: str, stage: _Stage,
             prescan: _Prescan) -> tuple[str | None, ScanResult | None]:
    """(policy refusal code, None) or (None, clamd result).  One pass over the bytes.

    If the client app streamed the upload to clamd while receiving it, the
    pass runs without clamd and then takes clamd's answer from the row, for
    these bytes only (the digest check below); without one in time it streams
    the file to clamd itself."""
    with services.reader() as db:
        upload = db.get(Upload, upload_id)
        assert upload is not None
        reader = _open_dropzone(services, upload)
    with contextlib.closing(reader):
        # Header checks only; the CSV NUL check runs in the pass below.
        policy = check_file(cast(BinaryIO, reader), filename, size, scan_nul=False)
        if not policy.allowed:
            return policy.reason or "type_not_allowed", None
        scanner = services.scanner()
        if scanner is None:
            raise ScannerUnavailableError("no clamd configured")
        numbers = _NumberCheck(services, upload, policy.kind)
        digest = hashlib.sha256()
        nul_check = policy.kind == "csv"
        found_nul = False
        reader.seek(0)

        def chunks() -> Any:
            nonlocal found_nul
            for i, chunk in enumerate(reader.iter_chunks(COPY_CHUNK)):
                digest.update(chunk)
                if nul_check and not found_nul and b"\0" in chunk:
                    found_nul = True
                stage.write(chunk)
                yield chunk
                if i == 1:
                    checkpoint("scan:streaming")
            # Everything is sent: finish the staged copy while clamd scans.
            stage.finish_async(expected_sha256, size)

        try:
            if prescan.expected:
                for _ in chunks():
                    pass
                result = prescan.wait(services, upload_id)
                if result is None:  # no answer: the same reader again, to clamd only
                    reader.seek(0)
                    result = scanner.scan_stream(reader.iter_chunks(COPY_CHUNK))
            else:
                result = scanner.scan_stream(chunks())
        except ScannerError as exc:
            numbers.cancel()
            raise ScannerUnavailableError(str(exc)) from exc
        except BaseException:
            numbers.cancel()
            raise
        checkpoint("scan:verdict")
        numbers.save(upload_id)
        if digest.hexdigest() != expected_sha256:
            # What clamd saw is not what the client sent: not a verdict on it.
            raise IntegrityError("plaintext digest differs from the recorded digest")
        if result.verdict == "clean" and found_nul:
            return "type_not_allowed", None  # a CSV with NUL bytes is not text
        return None, result


class _NumberCheck:
    """The check-digit report, on its own decrypting reader in a thread, so
    that it overlaps the scan pass instead of adding one.

    It is advice for the client and office: whatever happens in it must never
    fail (or pass) the scan.  No content is logged.
    """

    def __init__(self, services: Services, upload: Upload, kind: str | None) -> None:
        # Imported here: the web apps import this module (through portal.jobs)
        # but never run a number check (1.3 MB: csv, zipfile, expat, decimal).
        from scanners.numbers_scan import KINDS

        self._services = services
        self.kind = kind
        self.report: NumberReport | None = None
        self._thread: threading.Thread | None = None
        self._reader: EnvelopeReader | None = None
        self._cancelled = False
        if kind not in KINDS:
            return
        self._reader = _open_dropzone(services, upload)
        self._upload_id = upload.id
        self._thread = threading.Thread(target=self._run, name="kinko-numbers",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from scanners.numbers_scan import scan_numbers

        assert self._reader is not None and self.kind is not None
        try:
            report = scan_numbers(cast(BinaryIO, self._reader), self.kind)
        except Exception as exc:  # noqa: BLE001 - see the class doc
            if not self._cancelled:
                log.warning("number check of upload %s failed: %s", self._upload_id,
                            type(exc).__name__)
            return
        finally:
            self._reader.close()
        if report.error is not None:
            log.warning("number check of upload %s skipped: %s", self._upload_id,
                        report.error)
            return
        self.report = report

    def cancel(self) -> None:
        """Stop caring (the thread ends on its own, bounded by the check's limits)."""
        self._cancelled = True

    def save(self, upload_id: str) -> None:
        if self._thread is not None:
            self._thread.join()
        with self._services.sessions() as db, db.begin():
            row = db.get(Upload, upload_id)
            if row is not None:
                row.kind = self.kind
                if self.report is not None:
                    row.mynumber_found = self.report.found
                    row.mynumber_invalid = json.dumps({
                        "invalid": [c.as_dict() for c in self.report.invalid],
                        "truncated": self.report.truncated}, ensure_ascii=False)


def _defer(services: Services, upload_id: str, attempts: int, why: str) -> ScanOutcome:
    s = services.settings
    delay = min(s.scan_retry_max, s.scan_retry_base * (2 ** min(attempts, 16)))
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        assert upload is not None
        upload.scan_attempts = attempts + 1
        upload.next_attempt_at = utcnow() + timedelta(seconds=delay)
        upload.lease_until = None
        record(db, services.audit_key, Tag.SCAN_DEFERRED, SYSTEM,
               company_id=upload.company_id, upload_id=upload_id,
               details={"attempt": attempts + 1, "retry_in_s": round(delay, 1), "why": why})
    return ScanOutcome(Status.SCANNING, retry_in=delay)


def _finish_clean(services: Services, upload_id: str, stage: _Stage, *,
                  on_receipt: bool = False) -> ScanOutcome:
    """Commit ``clean`` and, in the same transaction, the staged vault copy."""
    staged = stage.wait()
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        assert upload is not None
        if upload.status != Status.SCANNING:
            stage.discard()  # another run of this scan finished first
            return ScanOutcome(upload.status)
        _transition(db, upload, Status.CLEAN)
        upload.scanned_at = utcnow()
        upload.lease_until = None
        upload.reason = None
        if staged:
            upload.staged_key = stage.key
            upload.staged_wrapped_key = stage.wrapped_key
            upload.staged_ciphertext_sha256 = stage.ciphertext_sha256
            upload.vault_key_id = services.vault_public.key_id
        record(db, services.audit_key, Tag.SCAN_CLEAN, SYSTEM,
               company_id=upload.company_id, upload_id=upload_id,
               details={"kind": upload.kind, **({"on_receipt": True} if on_receipt else {})})
        auto = db.get(Company, upload.company_id)
        auto_pull = bool(auto and auto.auto_pull)
    checkpoint("scan:committed")
    # Staged copies of earlier, interrupted runs of this scan.
    _delete_staged(services, upload_id, keep=stage.key if staged else None)
    return ScanOutcome(Status.CLEAN, auto_pull=auto_pull,
                       staged_key=stage.key if staged else None)


def _delete_staged(services: Services, upload_id: str, keep: str | None = None) -> None:
    for key in list(services.vault.keys(f"staging/{upload_id}.")):
        if key != keep:
            services.vault.delete(key)


def _finish_rejected(services: Services, upload_id: str, status: Status, reason: str,
                     signature: str | None, tag: Tag, *,
                     on_receipt: bool = False) -> ScanOutcome:
    """Infected or refused: record why, then delete the (encrypted) drop-zone copy."""
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        assert upload is not None
        if upload.status != Status.SCANNING:
            return ScanOutcome(upload.status)
        _transition(db, upload, status)
        upload.reason = reason
        upload.signature = signature[:200] if signature else None
        upload.scanned_at = utcnow()
        upload.lease_until = None
        # Password-protected, and the office lets clients type the password:
        # keep the encrypted copy for a while (portal.opening, portal.unlock).
        keep = reason == "encrypted" and opening_enabled(db)
        if keep:
            upload.unlock_until = utcnow() + KEEP_FOR
        record(db, services.audit_key, tag, SYSTEM, company_id=upload.company_id,
               upload_id=upload_id, details={"reason": reason, "signature": signature,
                                             **({"kept_for_opening": True} if keep else {}),
                                             **({"on_receipt": True} if on_receipt else {})})
    _delete_staged(services, upload_id)
    if not keep:
        _drop_dropzone_copy(services, upload_id)
    return ScanOutcome(status)


def _drop_dropzone_copy(services: Services, upload_id: str) -> None:
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        if upload is None or upload.dropzone_key is None:
            return
        services.dropzone.delete(upload.dropzone_key)
        upload.dropzone_key = None
        record(db, services.audit_key, Tag.DROPZONE_DELETED, SYSTEM,
               company_id=upload.company_id, upload_id=upload_id)


# -- pull into the vault ---------------------------------------------------

def pull_upload(services: Services, upload_id: str, actor: Actor,
                remote_addr: str | None = None, *,
                staged_just_verified: str | None = None) -> Upload:
    """Move a clean upload into the vault.  Idempotent; see the module doc.

    ``staged_just_verified``: the staged key that the calling scan job wrote and
    read back moments ago (auto-pull in the same job); see ``_promote``.
    Raises PipelineError("not_found" | "not_clean") and StorageError /
    IntegrityError (the drop-zone copy is then left untouched).
    """
    with services.reader() as db:
        upload = db.get(Upload, upload_id)
        if upload is None:
            raise PipelineError("not_found")
        status, dz_key, expected, size = (upload.status, upload.dropzone_key,
                                          upload.sha256, upload.size)
        staged = (upload.staged_key, upload.staged_wrapped_key,
                  upload.staged_ciphertext_sha256, upload.vault_key_id)
    if status == Status.VAULTED:
        return _finish_pull(services, upload_id)
    if status != Status.CLEAN or dz_key is None:
        raise PipelineError("not_clean")
    if staged[0] and staged[1] and staged[2]:
        try:
            return _promote(services, upload_id, actor, remote_addr, staged[0], staged[1],
                            staged[2], staged[3] or services.vault_public.key_id,
                            just_verified=staged_just_verified == staged[0])
        except _StagedUnusable as exc:
            # The staged copy is gone or damaged: forget it and copy from the
            # drop zone, which is still there (it goes only after a commit).
            log.warning("staged vault copy of %s not usable (%s); copying instead",
                        upload_id, exc.why)
            _forget_staged(services, upload_id, staged[0])
    return _copy_pull(services, upload_id, actor, remote_addr, dz_key, expected, size)


class _StagedUnusable(Exception):
    """Promotion failed before its commit; the drop-zone copy is untouched."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _forget_staged(services: Services, upload_id: str, staged_key: str) -> None:
    with services.sessions() as db, db.begin():
        db.execute(update(Upload).where(Upload.id == upload_id,
                                        Upload.staged_key == staged_key)
                   .values(staged_key=None, staged_wrapped_key=None,
                           staged_ciphertext_sha256=None))
    with contextlib.suppress(StorageError, OSError):
        services.vault.delete(staged_key)


def _promote(services: Services, upload_id: str, actor: Actor, remote_addr: str | None,
             staged_key: str, wrapped_key: bytes, ciphertext_sha256: str,
             key_id: str, *, just_verified: bool = False) -> Upload:
    """Pull of a staged upload: copy the sealed bytes to ``vault/<id>.<attempt>``
    (the object id they were sealed for) inside the vault backend, verify their
    ciphertext digest by reading them back, commit, delete.

    One case is verified without reading: the copy is a hard link (the same
    inode, checked by the storage) of a staged object that this very job wrote
    and read back moments ago.  Those bytes were just verified, and a later
    pull (staff, days later) or a real copy (S3) always reads back."""
    vault_key = "vault/" + staged_key.removeprefix("staging/")
    checkpoint("pull:copying")
    try:
        # A hard link on local disk, a server-side copy on S3: the bytes do
        # not pass through here.
        shared = services.vault.duplicate(staged_key, vault_key)
    except (StorageError, OSError) as exc:
        raise _StagedUnusable(type(exc).__name__) from exc
    checkpoint("pull:written")

    try:
        if not (shared and just_verified):
            _verify_ciphertext(services, vault_key, ciphertext_sha256)
    except (StorageError, OSError) as exc:
        _delete_unless_committed(services, upload_id, vault_key)
        raise _StagedUnusable(type(exc).__name__) from exc
    except BaseException:
        _delete_unless_committed(services, upload_id, vault_key)
        raise
    checkpoint("pull:verified")
    _commit_pull(services, upload_id, actor, remote_addr, vault_key, wrapped_key,
                 ciphertext_sha256, key_id, staged_key=staged_key)
    checkpoint("pull:committed")
    return _finish_pull(services, upload_id)


def _verify_ciphertext(services: Services, key: str, ciphertext_sha256: str) -> None:
    """Read back a promoted copy.  The staged object it was copied from was
    decrypted with its data key right after it was written (scan time); equal
    ciphertext therefore decrypts to the uploaded bytes."""
    digest = hashlib.sha256()
    with contextlib.closing(services.vault.open(key)) as raw:
        while chunk := raw.read(COPY_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != ciphertext_sha256:
        raise IntegrityError("vault object differs from what was written")


def _delete_unless_committed(services: Services, upload_id: str, vault_key: str) -> None:
    """Delete our copy, unless a concurrent pull of the same staging committed it."""
    with services.reader() as db:
        committed = db.execute(select(Upload.vault_key)
                               .where(Upload.id == upload_id)).scalar_one_or_none()
    if committed != vault_key:
        services.vault.delete(vault_key)


def _commit_pull(services: Services, upload_id: str, actor: Actor, remote_addr: str | None,
                 vault_key: str, wrapped_key: bytes, ciphertext_sha256: str, key_id: str,
                 *, staged_key: str | None = None) -> bool:
    """CAS ``clean`` → ``vaulted``.  False (and our copy deleted) if another pull won."""
    with services.sessions() as db, db.begin():
        cond = [Upload.id == upload_id, Upload.status == Status.CLEAN]
        if staged_key is not None:
            cond.append(Upload.staged_key == staged_key)
        won = cast(CursorResult[Any], db.execute(
            update(Upload).where(*cond)
            .values(status=Status.VAULTED, vault_key=vault_key,
                    retention_until=retention_until(db, upload_id),
                    vault_key_id=key_id, vault_wrapped_key=wrapped_key,
                    vault_ciphertext_sha256=ciphertext_sha256,
                    staged_key=None, staged_wrapped_key=None,
                    staged_ciphertext_sha256=None,
                    vaulted_at=utcnow(), updated_at=utcnow())
        )).rowcount
        if won:
            company_id = db.execute(select(Upload.company_id)
                                    .where(Upload.id == upload_id)).scalar_one()
            db.add(UploadEvent(upload_id=upload_id, status=Status.VAULTED))
            record(db, services.audit_key, Tag.FILE_VAULTED, actor, company_id=company_id,
                   upload_id=upload_id, remote_addr=remote_addr,
                   details={"vault_key_id": key_id})
    if not won:
        _delete_unless_committed(services, upload_id, vault_key)
    return bool(won)


def _copy_pull(services: Services, upload_id: str, actor: Actor, remote_addr: str | None,
               dz_key: str, expected: str, size: int) -> Upload:
    """Pull without a staged copy: decrypt the drop-zone object and seal it anew."""
    vault_key = f"vault/{upload_id}.{secrets.token_hex(8)}"
    source = services.dropzone.open(dz_key)
    with contextlib.closing(open_envelope(source, dz_key,
                                          unwrapper=services.dropzone_key)) as plain:
        with services.vault.writer(vault_key, {"created": str(int(time.time()))}) as out:
            sealed = seal(out, services.vault_public, vault_key, embed_key=False)
            for i, chunk in enumerate(plain.iter_chunks(COPY_CHUNK)):
                sealed.write(chunk)
                if i == 1:
                    checkpoint("pull:copying")  # a crash with a half-written object
            sealed.close()
            if sealed.plaintext_sha256 != expected or sealed.plaintext_size != size:
                raise IntegrityError("drop-zone plaintext differs from the recorded digest")
    checkpoint("pull:written")

    try:
        _read_back(services, vault_key, sealed.data_key, size, sealed.ciphertext_sha256)
    except BaseException:
        services.vault.delete(vault_key)
        raise
    checkpoint("pull:verified")
    _commit_pull(services, upload_id, actor, remote_addr, vault_key, sealed.wrapped_key,
                 sealed.ciphertext_sha256, services.vault_public.key_id)
    checkpoint("pull:committed")
    return _finish_pull(services, upload_id)


def retention_until(db: Any, upload_id: str) -> date:
    """Today in Japan plus the purpose's retention period (years)."""
    years = db.execute(select(Purpose.retention_years).join(
        Upload, Upload.purpose_code == Purpose.code).where(Upload.id == upload_id)).scalar_one()
    today = datetime.now(JST).date()
    try:
        return today.replace(year=today.year + years)
    except ValueError:  # 29 February
        return today.replace(year=today.year + years, day=28)


def _read_back(services: Services, key: str, data_key: bytes, size: int,
               ciphertext_sha256: str, *, oid: str | None = None) -> None:
    """The verify of copy → verify → delete: read back what was written.

    Its SHA-256 must be the one the sealer computed over every byte it wrote
    (storage returns exactly that), and it must decrypt, every segment's tag
    checked, with the data key still in memory to the uploaded size (header,
    object id and key agree).  The sealer's input was already checked against
    the recorded plaintext digest by its caller, so hashing the plaintext a
    third time would prove nothing new."""
    raw = _HashingReader(services.vault.open(key))
    n = 0
    plain = open_envelope(cast(BinaryIO, raw), oid or key, data_key=data_key)
    for chunk in plain.iter_chunks(COPY_CHUNK):
        n += len(chunk)
    raw.drain()
    plain.close()
    if n != size:
        raise IntegrityError("vault object does not decrypt to the uploaded size")
    if raw.hexdigest() != ciphertext_sha256:
        raise IntegrityError("vault object differs from what was written")


def _finish_pull(services: Services, upload_id: str) -> Upload:
    """Steps after the commit: drop-zone copy gone, stale attempts gone."""
    _drop_dropzone_copy(services, upload_id)
    checkpoint("pull:dropzone_deleted")
    with services.reader() as db:
        upload = db.get(Upload, upload_id)
        assert upload is not None
    for key in list(services.vault.keys(f"vault/{upload_id}.")):
        if key != upload.vault_key:
            services.vault.delete(key)
    _delete_staged(services, upload_id, keep=upload.staged_key)
    return upload


class _HashingReader:
    """A non-seekable pass-through that hashes every byte read."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self._sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._sha.update(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def drain(self) -> None:
        """Hash whatever the envelope reader left unread (it normally reads to EOF)."""
        if getattr(self._inner, "closed", False):
            return
        while self.read(COPY_CHUNK):
            pass
        self._inner.close()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        self._inner.close()


# -- read from the vault (office side only) --------------------------------

def open_vaulted(services: Services, upload: Upload) -> EnvelopeReader:
    """Decrypting reader over a vaulted file.  Needs the vault private key."""
    if services.vault_private is None:
        raise PipelineError("no_vault_key")
    if upload.status != Status.VAULTED or not upload.vault_key or not upload.vault_wrapped_key:
        raise PipelineError("not_vaulted")
    source = services.vault.open(upload.vault_key)
    return open_envelope(source, upload.vault_key, unwrapper=services.vault_private,
                         wrapped_key=upload.vault_wrapped_key)


__all__ = ["PipelineError", "ScanOutcome", "StorageError", "open_vaulted", "pull_upload",
           "scan_upload"]
