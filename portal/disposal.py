"""Disposal (廃棄): a handler proposes, a different person, a manager, approves.

Approval is crash-safe and idempotent, in two steps:

1. one transaction: the upload becomes ``disposed`` and its wrapped data key
   is set to NULL (crypto-shredding: from this commit on no copy of the
   vault object, in any backup or bucket version, can be decrypted), the
   disposal record (削除・廃棄記録) is written, the client's history gets a
   ``disposed`` event, the audit log gets ``office:file:disposed`` and
   ``office:disposal:approved``, and open deletion requests are closed;
2. the vault object (every version), stale attempts ``vault/<id>.*`` and any
   drop-zone remnant are deleted, then ``vault_key``/``dropzone_key`` are
   cleared.

A crash between 1 and 2 leaves a ``disposed`` row whose ``vault_key`` still
names the (already undecryptable) object: :func:`approve` run again, or
:func:`finish_pending`, completes step 2.  ``vault_key`` is kept until the
object is gone so that a version-aware backend deletes exactly that key's
versions even when a listing would no longer show it.

The record holds no file name, no digest and no content: kind, company,
purpose, size, who proposed and approved, when, why and how.  A reason that
looks like a My Number is refused.  This module does not import Flask.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from .audit import Actor, Tag, record
from .faults import checkpoint
from .models import DeletionRequest, DisposalRecord, Staff, Status, Upload, UploadEvent, utcnow
from .pii import has_number_run, mask_mynumbers
from .services import Services

METHOD = "vault object and all versions deleted; data key destroyed"
REASON_MAX = 1000


class DisposalError(Exception):
    """Disposal cannot go ahead; ``code`` says why.

    Codes: ``not_found``, ``not_vaulted``, ``already_proposed``, ``no_reason``,
    ``reason_too_long``, ``reason_has_number``, ``not_proposed``,
    ``same_person``, ``not_manager``, ``not_allowed``.
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def staff_label(staff: Staff) -> str:
    """How a person is named in the record: full name and login, or the login."""
    return f"{staff.display_name} ({staff.login})" if staff.display_name else staff.login


def staff_actor(staff: Staff, kind: str = "staff") -> Actor:
    return Actor(kind, staff.id, staff.login)


def check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise DisposalError("no_reason")
    if len(reason) > REASON_MAX:
        raise DisposalError("reason_too_long")
    if has_number_run(reason):
        # The record outlives the file: it must never carry a number.
        raise DisposalError("reason_has_number")
    return reason


# -- propose / withdraw ------------------------------------------------------------

def propose(db: Session, services: Services, staff: Staff, upload: Upload, reason: str, *,
            remote_addr: str | None = None, actor: Actor | None = None) -> None:
    """Record a proposal inside the caller's transaction (the commit is theirs).

    Any active staff member who may serve the company may propose, for a
    ``vaulted`` file not already proposed.  Raises :class:`DisposalError`.
    """
    if not staff.active or not staff.may_serve(upload.company_id):
        raise DisposalError("not_found")
    if upload.status != Status.VAULTED:
        raise DisposalError("not_vaulted")
    if upload.disposal_proposed_by_id is not None:
        raise DisposalError("already_proposed")
    reason = check_reason(reason)
    upload.disposal_proposed_by_id = staff.id
    upload.disposal_proposed_at = utcnow()
    upload.disposal_reason = reason
    record(db, services.audit_key, Tag.DISPOSAL_PROPOSED, actor or staff_actor(staff),
           company_id=upload.company_id, upload_id=upload.id, remote_addr=remote_addr,
           details={"reason_chars": len(reason)})


def withdraw(db: Session, services: Services, staff: Staff, upload: Upload, *,
             remote_addr: str | None = None, actor: Actor | None = None) -> None:
    """Withdraw (proposer) or turn down (a manager) a pending proposal.

    Audited as ``office:disposal:refused`` with ``why: withdrawn``.
    """
    if not staff.active or not staff.may_serve(upload.company_id):
        raise DisposalError("not_found")
    if upload.status != Status.VAULTED or upload.disposal_proposed_by_id is None:
        raise DisposalError("not_proposed")
    if not (staff.is_manager or staff.id == upload.disposal_proposed_by_id):
        raise DisposalError("not_allowed")
    upload.disposal_proposed_by_id = None
    upload.disposal_proposed_at = None
    upload.disposal_reason = None
    record(db, services.audit_key, Tag.DISPOSAL_REFUSED, actor or staff_actor(staff),
           company_id=upload.company_id, upload_id=upload.id, remote_addr=remote_addr,
           details={"why": "withdrawn"})


def refuse(db: Session, services: Services, actor: Actor, upload: Upload, why: str, *,
           remote_addr: str | None = None) -> None:
    """Audit a refused approval (e.g. a missing TOTP code, checked by the caller)."""
    record(db, services.audit_key, Tag.DISPOSAL_REFUSED, actor,
           company_id=upload.company_id, upload_id=upload.id, remote_addr=remote_addr,
           details={"why": why})


# -- approve -----------------------------------------------------------------------

def _refusal(upload: Upload, approver: Staff) -> str | None:
    if upload.status != Status.VAULTED:
        return "not_vaulted"
    if upload.disposal_proposed_by_id is None:
        return "not_proposed"
    if approver.id == upload.disposal_proposed_by_id:
        return "same_person"  # two people, always: never the proposer
    if not approver.is_manager:
        return "not_manager"
    return None


def approve(services: Services, upload_id: str, approver: Staff, *,
            remote_addr: str | None = None, actor: Actor | None = None) -> DisposalRecord:
    """Approve a proposed disposal and dispose of the file.  Idempotent.

    Refusals (``not_vaulted``, ``not_proposed``, ``same_person``,
    ``not_manager``) are audited as ``office:disposal:refused`` and raised as
    :class:`DisposalError`; an upload the approver may not serve raises
    ``not_found``.  Approving an already ``disposed`` upload finishes any
    deletion a crash interrupted and returns its record.
    """
    who = actor or staff_actor(approver)
    why: str | None = None
    with services.sessions() as db, db.begin():
        upload = db.get(Upload, upload_id)
        staff = db.get(Staff, approver.id)
        if upload is None or staff is None or not staff.active \
                or not staff.may_serve(upload.company_id):
            raise DisposalError("not_found")
        done: DisposalRecord | None = None
        if upload.status == Status.DISPOSED:
            done = _record_of(db, upload_id)
        else:
            why = _refusal(upload, staff)
            if why is not None:
                refuse(db, services, who, upload, why, remote_addr=remote_addr)
            else:
                done = _commit_disposal(db, services, upload, staff, who, remote_addr)
                why = None if done is not None else "not_vaulted"
    if done is None:
        raise DisposalError(why or "not_vaulted")
    checkpoint("disposal:committed")
    _delete_objects(services, upload_id)
    return done


def _commit_disposal(db: Session, services: Services, upload: Upload, approver: Staff,
                     who: Actor, remote_addr: str | None) -> DisposalRecord | None:
    """Step 1: the crypto-shred and the record, in one transaction."""
    now = utcnow()
    proposer_id = upload.disposal_proposed_by_id
    # Compare-and-set: only a still-vaulted, still-proposed row is disposed.
    won = cast(CursorResult[Any], db.execute(
        update(Upload).where(Upload.id == upload.id, Upload.status == Status.VAULTED,
                             Upload.disposal_proposed_by_id == proposer_id)
        .values(status=Status.DISPOSED, disposed_at=now, vault_wrapped_key=None,
                staged_wrapped_key=None,
                filename=mask_mynumbers(upload.filename), updated_at=now)
        .execution_options(synchronize_session="fetch"))).rowcount
    if not won:
        return None
    proposer = db.get(Staff, proposer_id)
    rec = DisposalRecord(
        upload_id=upload.id, company_id=upload.company_id,
        kind=upload.kind or (upload.sniffed if upload.sniffed != "unknown" else None),
        purpose_code=upload.purpose_code, size=upload.size, received_at=upload.created_at,
        proposed_by=staff_label(proposer) if proposer else f"#{proposer_id}",
        proposed_at=upload.disposal_proposed_at or now,
        approved_by=staff_label(approver), approved_at=now,
        reason=upload.disposal_reason or "", method=METHOD)
    db.add(rec)
    db.add(UploadEvent(upload_id=upload.id, status=Status.DISPOSED, at=now))
    db.flush()
    closed = cast(CursorResult[Any], db.execute(
        update(DeletionRequest).where(DeletionRequest.upload_id == upload.id,
                                      DeletionRequest.status == "open")
        .values(status="done", closed_at=now))).rowcount
    record(db, services.audit_key, Tag.FILE_DISPOSED, who, company_id=upload.company_id,
           upload_id=upload.id, remote_addr=remote_addr,
           details={"record_id": rec.id, "vault_key_id": upload.vault_key_id or "",
                    "method": "key_destroyed"})
    record(db, services.audit_key, Tag.DISPOSAL_APPROVED, who, company_id=upload.company_id,
           upload_id=upload.id, remote_addr=remote_addr,
           details={"record_id": rec.id, "proposed_by": proposer_id,
                    "deletion_requests_closed": closed})
    return rec


def _record_of(db: Session, upload_id: str) -> DisposalRecord | None:
    return db.execute(select(DisposalRecord).where(DisposalRecord.upload_id == upload_id)
                      ).scalar_one_or_none()


def _delete_objects(services: Services, upload_id: str) -> None:
    """Step 2: every stored copy goes; then the row forgets the keys.  Re-runnable."""
    with services.sessions() as db:
        upload = db.get(Upload, upload_id)
        if upload is None or upload.status != Status.DISPOSED:
            return
        vault_key, dz_key = upload.vault_key, upload.dropzone_key
    if vault_key:
        services.vault.delete(vault_key)  # every version, where the backend keeps them
    for key in list(services.vault.keys(f"vault/{upload_id}.")):
        services.vault.delete(key)
    for key in list(services.vault.keys(f"staging/{upload_id}.")):
        services.vault.delete(key)  # a staged copy left by a crash (same data key)
    if dz_key:
        services.dropzone.delete(dz_key)
    for key in list(services.dropzone.keys(f"dz/{upload_id}")):
        if key == f"dz/{upload_id}" or key.startswith((f"dz/{upload_id}.",
                                                       f"dz/{upload_id}/")):
            services.dropzone.delete(key)
    checkpoint("disposal:objects_deleted")
    with services.sessions() as db, db.begin():
        db.execute(update(Upload).where(Upload.id == upload_id,
                                        Upload.status == Status.DISPOSED)
                   .values(vault_key=None, dropzone_key=None))


def finish_pending(services: Services) -> list[str]:
    """Complete step 2 for every disposed upload that still names an object.

    Meant for the reconciler: a crash after the commit of step 1 is then
    repaired without anyone approving again.  Returns the upload ids.
    """
    with services.sessions() as db:
        ids = list(db.execute(select(Upload.id).where(
            Upload.status == Status.DISPOSED,
            (Upload.vault_key.is_not(None)) | (Upload.dropzone_key.is_not(None)))).scalars())
    for upload_id in ids:
        _delete_objects(services, upload_id)
    return ids


def record_for(db: Session, record_or_upload_id: str) -> DisposalRecord | None:
    """A record by its number (certificate number) or by its upload id."""
    if record_or_upload_id.isdigit() and len(record_or_upload_id) < 12:
        found = db.get(DisposalRecord, int(record_or_upload_id))
        if found is not None:
            return found
    return _record_of(db, record_or_upload_id[:64])


__all__ = ["METHOD", "DisposalError", "approve", "check_reason", "finish_pending",
           "propose", "record_for", "refuse", "staff_label", "withdraw"]
