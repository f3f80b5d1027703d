"""``kinko keys``: key custody commands (office role).

``kinko keys rewrap [--dry-run]`` moves every vault object to the vault key configured
now (``KINKO_VAULT_KMS_KEY``, or ``vault.pub`` when unset) without touching its payload:

1. **Wrapped key** (the authoritative copy, ``uploads.vault_wrapped_key``): the data key
   is unwrapped with the office key ring (KMS ``Decrypt`` or ``vault.key``), wrapped for
   the current key (KMS ``Encrypt``), the new wrapped key is unwrapped once more as a
   check, then swapped in by compare-and-set.  From that commit on the object opens with
   the new key only; the old key is no longer needed for it.
2. **Header** (a hint that names the key): the object is rewritten as new header + the
   old payload bytes, copied verbatim (``storage.kms.rewrite_detached_header``), after
   the new ciphertext SHA-256 was recorded; then read back and checked.

The same is done for the vault copies staged at scan time for ``clean`` uploads
(``uploads.staged_*``), so that a pull after the old key is gone still works.

Each step is idempotent and a crash between any two lines leaves a readable object;
re-running finishes the work.  The run is audited once, with counts only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, cast

import click
from sqlalchemy import CursorResult, select, update

from storage.errors import StorageError
from storage.keys import KeyUnwrapper, KeyWrapper
from storage.kms import KMS_SCHEME, header_of, rewrite_detached_header, wrapped_key_arn

from .audit import Actor, record
from .models import Status, Upload, utcnow
from .services import Services

log = logging.getLogger(__name__)


class KeyTag(StrEnum):
    VAULT_REWRAPPED = "office:vault:rewrapped"
    VAULT_REWRAP_CHECKED = "office:vault:rewrap_checked"


@dataclass
class RewrapReport:
    """Counts only: no ids, names or key material."""

    objects: int = 0
    current: int = 0
    rewrapped: int = 0
    headers: int = 0
    failed: int = 0


def _on_target(target: KeyWrapper, wrapped: bytes, recorded_key_id: str | None) -> bool:
    arn = wrapped_key_arn(wrapped)
    if target.scheme == KMS_SCHEME:
        return arn is not None and arn == getattr(target, "arn", None)
    return arn is None and recorded_key_id == target.key_id


@dataclass(frozen=True)
class _Slot:
    """Where a vault-sealed object and its wrapped key live: the vault object of a
    ``vaulted`` upload, or the copy staged at scan time for a ``clean`` one (sealed for
    object id ``vault/<id>.<attempt>``, stored under ``staging/<id>.<attempt>``)."""

    status: Status
    prefix: str  # column prefix: vault_* or staged_*
    key_column: str

    def columns(self) -> tuple[Any, Any, Any]:
        return (getattr(Upload, self.key_column), getattr(Upload, f"{self.prefix}_wrapped_key"),
                getattr(Upload, f"{self.prefix}_ciphertext_sha256"))

    def object_id(self, key: str) -> str:
        return "vault/" + key.removeprefix("staging/") if self.prefix == "staged" else key


SLOTS = (_Slot(Status.VAULTED, "vault", "vault_key"), _Slot(Status.CLEAN, "staged", "staged_key"))


def _rewrap_one(services: Services, ring: KeyUnwrapper, slot: _Slot, upload_id: str,
                dry_run: bool, report: RewrapReport) -> None:
    target = services.vault_public
    key_col, wrapped_col, sha_col = slot.columns()
    with services.sessions() as db:
        row = db.execute(select(Upload.status, key_col, wrapped_col, sha_col,
                                Upload.vault_key_id).where(Upload.id == upload_id)).one_or_none()
    if row is None or row[0] != slot.status or not row[1] or not row[2]:
        return
    key, wrapped, ct_sha, recorded_key_id = row[1], bytes(row[2]), row[3], row[4]
    oid = slot.object_id(key)
    report.objects += 1
    on_target = _on_target(target, wrapped, recorded_key_id)
    header = header_of(services.vault, key)
    header_ok = header.detached and header.key_id == target.key_id \
        and header.wrap == target.scheme
    if on_target and header_ok:
        report.current += 1
        return
    if dry_run:
        report.rewrapped += not on_target
        report.headers += not header_ok
        return
    if not on_target:
        dek = ring.unwrap(wrapped, oid)
        new = target.wrap(dek, oid)
        if ring.unwrap(new, oid) != dek:  # the new wrapped key must open before it counts
            raise StorageError("the re-wrapped data key does not unwrap")
        del dek
        with services.sessions() as db, db.begin():
            won = cast(CursorResult[Any], db.execute(
                update(Upload).where(Upload.id == upload_id, Upload.status == slot.status,
                                     key_col == key, wrapped_col == wrapped)
                .values({wrapped_col: new, Upload.vault_key_id: target.key_id,
                         Upload.updated_at: utcnow()}))).rowcount
        if not won:  # pulled, disposed or re-wrapped meanwhile: the next run sees it
            return
        report.rewrapped += 1
    if not header_ok:
        if not ct_sha:
            raise StorageError("no recorded ciphertext digest")

        def record_digest(new_sha: str) -> None:
            with services.sessions() as db, db.begin():
                db.execute(update(Upload).where(Upload.id == upload_id, key_col == key,
                                                sha_col == ct_sha)
                           .values({sha_col: new_sha}))

        rewrite_detached_header(services.vault, key, oid, target.key_id, target.scheme,
                                ct_sha, record_digest)
        report.headers += 1


def rewrap_vault(services: Services, actor: Actor, *, dry_run: bool = False) -> RewrapReport:
    """Move every vault-sealed object (vaulted, or staged at scan time) to the current
    vault key (see the module docstring).  Failures are counted, logged by upload id
    and type only, and left for the next run."""
    ring = services.vault_private
    if ring is None:
        raise PermissionError("re-wrapping needs the office role")
    report = RewrapReport()
    for slot in SLOTS:
        key_col, wrapped_col, _ = slot.columns()
        with services.sessions() as db:
            ids = list(db.execute(select(Upload.id).where(
                Upload.status == slot.status, key_col.is_not(None), wrapped_col.is_not(None))
                .order_by(Upload.id)).scalars())
        for upload_id in ids:
            try:
                _rewrap_one(services, ring, slot, upload_id, dry_run, report)
            except StorageError as exc:
                report.failed += 1
                log.warning("re-wrap of upload %s failed: %s", upload_id, type(exc).__name__)
    with services.sessions() as db, db.begin():
        record(db, services.audit_key,
               KeyTag.VAULT_REWRAP_CHECKED if dry_run else KeyTag.VAULT_REWRAPPED, actor,
               details={**asdict(report), "key_id": services.vault_public.key_id})
    return report


@click.group("keys")
def keys() -> None:
    """Key custody: re-wrap the vault to the current key."""


@keys.command("rewrap")
@click.option("--dry-run", is_flag=True, help="Only count what would move.")
@click.option("--staff", "staff_login", default=None, help="Record this staff as the actor.")
def rewrap(dry_run: bool, staff_login: str | None) -> None:
    """Re-wrap every vault object's data key (and header) to the current vault key."""
    from .cli import CliError, _cli_actor, _office, _staff

    svc = _office()
    with svc.sessions() as db:
        actor = _cli_actor(_staff(db, staff_login) if staff_login else None)
    report = rewrap_vault(svc, actor, dry_run=dry_run)
    verb = "would re-wrap" if dry_run else "re-wrapped"
    click.echo(f"vault objects: {report.objects}; already on key {svc.vault_public.key_id}: "
               f"{report.current}; {verb}: {report.rewrapped}; headers: {report.headers}; "
               f"failed: {report.failed}")
    if report.failed:
        raise CliError(f"{report.failed} vault objects could not be re-wrapped "
                       "(run again; see the log)")
