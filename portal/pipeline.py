"""Scan and vault: what happens to an upload after it was received.

Every function here is idempotent and safe to re-run after a crash at any
line; the database row is the single source of truth and each step is a
compare-and-set on its status.

Pull (drop zone → vault) is copy → verify → commit → delete:

1. decrypt the drop-zone object, re-encrypt it to the vault *public* key
   under a fresh data key, write it to a new attempt key
   ``vault/<id>.<attempt>`` (never overwriting a committed object);
2. read it back and decrypt it with the in-memory data key: the plaintext
   digest must equal the digest recorded at upload;
3. commit ``vaulted`` + the wrapped data key, only if the row is still
   ``clean`` (a concurrent pull that lost the race deletes its own copy);
4. delete the drop-zone object, then any stale attempt objects.

A crash before 3 leaves the upload ``clean`` with its drop-zone object (the
pull can be repeated; stale attempts are removed when one commits); a crash
after 3 leaves it ``vaulted`` and re-running finishes steps 4.  Never
neither, never two vault copies once it converges.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import IO, Any, BinaryIO, cast
from zoneinfo import ZoneInfo

from sqlalchemy import CursorResult, select, update

from scanners.clamd import ScanResult
from scanners.errors import ScannerError, ScannerUnavailableError
from scanners.filetypes import check_file
from scanners.numbers_scan import KINDS as NUMBER_KINDS
from scanners.numbers_scan import NumberReport, scan_numbers
from storage.envelope import EnvelopeReader, open_envelope, seal
from storage.errors import IntegrityError, ObjectNotFoundError, StorageError

from .audit import SYSTEM, Actor, Tag, record
from .faults import checkpoint
from .models import PENDING_SCAN, Company, Purpose, Status, Upload, UploadEvent, utcnow
from .services import Services

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


def _transition(db: Any, upload: Upload, status: Status) -> None:
    upload.status = status
    db.add(UploadEvent(upload_id=upload.id, status=status))


def _open_dropzone(services: Services, upload: Upload) -> EnvelopeReader:
    assert upload.dropzone_key
    source = services.dropzone.open(upload.dropzone_key)
    return open_envelope(source, upload.dropzone_key, unwrapper=services.dropzone_key)


# -- scan ------------------------------------------------------------------

def scan_upload(services: Services, upload_id: str) -> ScanOutcome:
    """Type policy, then clamd.  Only an explicit clean verdict makes it clean.

    Returns the outcome; ``retry_in`` is set when the scanner was unavailable
    and the upload stays ``scanning``.
    """
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        if upload is None:
            raise PipelineError("not_found")
        if upload.status not in PENDING_SCAN:
            return ScanOutcome(upload.status)
        # A lease: the reconciler re-queues this scan only if it has not
        # finished (or been deferred) by then, i.e. its worker died.
        upload.next_attempt_at = utcnow() + timedelta(
            seconds=services.settings.scan_timeout + 60)
        if upload.status == Status.RECEIVED:
            _transition(db, upload, Status.SCANNING)
            record(db, services.audit_key, Tag.SCAN_STARTED, SYSTEM,
                   company_id=upload.company_id, upload_id=upload.id)
        filename, size, expected = upload.filename, upload.size, upload.sha256
        attempts = upload.scan_attempts

    try:
        verdict, result = _inspect(services, upload_id, filename, size, expected)
    except ScannerUnavailableError as exc:
        return _defer(services, upload_id, attempts, type(exc).__name__)
    except (IntegrityError, ObjectNotFoundError):
        log.error("drop-zone object of upload %s is damaged or missing", upload_id)
        return _finish_rejected(services, upload_id, Status.REFUSED, "damaged", None,
                                Tag.SCAN_DAMAGED)
    if verdict is not None:
        return _finish_rejected(services, upload_id, Status.REFUSED, verdict, None,
                                Tag.SCAN_REFUSED)
    assert result is not None
    if result.verdict == "clean":
        return _finish_clean(services, upload_id)
    status = Status.INFECTED if result.verdict == "infected" else Status.REFUSED
    tag = Tag.SCAN_INFECTED if status == Status.INFECTED else Tag.SCAN_REFUSED
    return _finish_rejected(services, upload_id, status, result.reason or "malware",
                            result.signature, tag)


def _inspect(services: Services, upload_id: str, filename: str, size: int,
             expected_sha256: str) -> tuple[str | None, ScanResult | None]:
    """(policy refusal code, None) or (None, clamd result)."""
    with services.sessions() as db:
        upload = db.get(Upload, upload_id)
        assert upload is not None
        reader = _open_dropzone(services, upload)
    with contextlib.closing(reader):
        policy = check_file(cast(BinaryIO, reader), filename, size)
        if not policy.allowed:
            return policy.reason or "type_not_allowed", None
        numbers: NumberReport | None = None
        if policy.kind in NUMBER_KINDS:
            # The check-digit report is advice for the client and office: whatever
            # happens in it must never fail (or pass) the scan.
            try:
                reader.seek(0)
                numbers = scan_numbers(cast(BinaryIO, reader), policy.kind)
            except Exception as exc:  # noqa: BLE001 - see above; no content is logged
                log.warning("number check of upload %s failed: %s", upload_id,
                            type(exc).__name__)
                numbers = None
            if numbers is not None and numbers.error is not None:
                log.warning("number check of upload %s skipped: %s", upload_id,
                            numbers.error)
                numbers = None
        with services.sessions() as db, db.begin():
            row = db.get(Upload, upload_id)
            if row is not None:
                row.kind = policy.kind
                if numbers is not None:
                    row.mynumber_found = numbers.found
                    row.mynumber_invalid = json.dumps({
                        "invalid": [c.as_dict() for c in numbers.invalid],
                        "truncated": numbers.truncated}, ensure_ascii=False)
        reader.seek(0)
        scanner = services.scanner()
        if scanner is None:
            raise ScannerUnavailableError("no clamd configured")
        digest = hashlib.sha256()

        def chunks() -> Any:
            for chunk in reader.iter_chunks(COPY_CHUNK):
                digest.update(chunk)
                yield chunk

        try:
            result = scanner.scan_stream(chunks())
        except ScannerError as exc:
            raise ScannerUnavailableError(str(exc)) from exc
        if digest.hexdigest() != expected_sha256:
            # What clamd saw is not what the client sent: not a verdict on it.
            raise IntegrityError("plaintext digest differs from the recorded digest")
        return None, result


def _defer(services: Services, upload_id: str, attempts: int, why: str) -> ScanOutcome:
    s = services.settings
    delay = min(s.scan_retry_max, s.scan_retry_base * (2 ** min(attempts, 16)))
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        assert upload is not None
        upload.scan_attempts = attempts + 1
        upload.next_attempt_at = utcnow() + timedelta(seconds=delay)
        record(db, services.audit_key, Tag.SCAN_DEFERRED, SYSTEM,
               company_id=upload.company_id, upload_id=upload_id,
               details={"attempt": attempts + 1, "retry_in_s": round(delay, 1), "why": why})
    return ScanOutcome(Status.SCANNING, retry_in=delay)


def _finish_clean(services: Services, upload_id: str) -> ScanOutcome:
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        assert upload is not None
        if upload.status != Status.SCANNING:
            return ScanOutcome(upload.status)
        _transition(db, upload, Status.CLEAN)
        upload.scanned_at = utcnow()
        upload.reason = None
        record(db, services.audit_key, Tag.SCAN_CLEAN, SYSTEM,
               company_id=upload.company_id, upload_id=upload_id,
               details={"kind": upload.kind})
        auto = db.get(Company, upload.company_id)
        auto_pull = bool(auto and auto.auto_pull)
    if auto_pull:
        services.enqueue.pull(upload_id, None)
    return ScanOutcome(Status.CLEAN)


def _finish_rejected(services: Services, upload_id: str, status: Status, reason: str,
                     signature: str | None, tag: Tag) -> ScanOutcome:
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
        record(db, services.audit_key, tag, SYSTEM, company_id=upload.company_id,
               upload_id=upload_id, details={"reason": reason, "signature": signature})
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
                remote_addr: str | None = None) -> Upload:
    """Move a clean upload into the vault.  Idempotent; see the module doc.

    Raises PipelineError("not_found" | "not_clean") and StorageError /
    IntegrityError (the drop-zone copy is then left untouched).
    """
    with services.sessions() as db:
        upload = db.get(Upload, upload_id)
        if upload is None:
            raise PipelineError("not_found")
        status, dz_key, expected, size = (upload.status, upload.dropzone_key,
                                          upload.sha256, upload.size)
    if status == Status.VAULTED:
        return _finish_pull(services, upload_id)
    if status != Status.CLEAN or dz_key is None:
        raise PipelineError("not_clean")

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
        _verify_vault_object(services, vault_key, sealed.data_key, expected, size,
                             sealed.ciphertext_sha256)
    except BaseException:
        services.vault.delete(vault_key)
        raise
    checkpoint("pull:verified")

    with services.sessions() as db, db.begin():
        won = cast(CursorResult[Any], db.execute(
            update(Upload).where(Upload.id == upload_id, Upload.status == Status.CLEAN)
            .values(status=Status.VAULTED, vault_key=vault_key,
                    retention_until=retention_until(db, upload_id),
                    vault_key_id=services.vault_public.key_id,
                    vault_wrapped_key=sealed.wrapped_key,
                    vault_ciphertext_sha256=sealed.ciphertext_sha256,
                    vaulted_at=utcnow(), updated_at=utcnow())
        )).rowcount
        if won:
            company_id = db.execute(select(Upload.company_id)
                                    .where(Upload.id == upload_id)).scalar_one()
            db.add(UploadEvent(upload_id=upload_id, status=Status.VAULTED))
            record(db, services.audit_key, Tag.FILE_VAULTED, actor, company_id=company_id,
                   upload_id=upload_id, remote_addr=remote_addr,
                   details={"vault_key_id": services.vault_public.key_id})
    if not won:
        services.vault.delete(vault_key)  # a concurrent pull committed first
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


def _verify_vault_object(services: Services, key: str, data_key: bytes, sha256: str,
                         size: int, ciphertext_sha256: str) -> None:
    """Read back what was written; decrypt it with the data key still in memory."""
    raw = _HashingReader(services.vault.open(key))
    digest = hashlib.sha256()
    n = 0
    plain = open_envelope(cast(BinaryIO, raw), key, data_key=data_key)
    for chunk in plain.iter_chunks(COPY_CHUNK):
        digest.update(chunk)
        n += len(chunk)
    raw.drain()
    plain.close()
    if digest.hexdigest() != sha256 or n != size:
        raise IntegrityError("vault object does not decrypt to the uploaded bytes")
    if raw.hexdigest() != ciphertext_sha256:
        raise IntegrityError("vault object differs from what was written")


def _finish_pull(services: Services, upload_id: str) -> Upload:
    """Steps after the commit: drop-zone copy gone, stale attempts gone."""
    _drop_dropzone_copy(services, upload_id)
    checkpoint("pull:dropzone_deleted")
    with services.sessions() as db:
        upload = db.get(Upload, upload_id)
        assert upload is not None
    for key in list(services.vault.keys(f"vault/{upload_id}.")):
        if key != upload.vault_key:
            services.vault.delete(key)
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
