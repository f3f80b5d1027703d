"""Repair what a crash can leave behind.  Run at worker start and every minute.

* uploads waiting for a scan whose job was lost → scanned again;
* ``vaulted`` uploads whose drop-zone copy survived → copy deleted;
* drop-zone objects with no row (crash between commit and insert) and vault
  attempt objects never committed → deleted once old enough that no request
  or pull can still be about to claim them;
* staged vault copies that the row does not name → deleted (at once when the
  scan is over, else once old enough);
* abandoned partial writes → deleted;
* tus uploads past their expiry → parts and row deleted (audited).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import or_, select, true, update

from storage.errors import ObjectNotFoundError

from .disposal import finish_pending
from .models import PENDING_SCAN, Status, Upload, utcnow
from .opening import expire_kept
from .pipeline import _drop_dropzone_copy, scan_upload
from .services import Services
from .tus import housekeeping as tus_housekeeping

log = logging.getLogger(__name__)

# Defaults of KINKO_ORPHAN_AGE_SECONDS and KINKO_PARTIAL_AGE_SECONDS (settings).
ORPHAN_AGE_S = 3600.0
PARTIAL_AGE_S = 24 * 3600.0  # an upload may take hours on a slow line


@dataclass
class Report:
    rescanned: list[str] = field(default_factory=list)
    dropzone_cleaned: list[str] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    partials_deleted: int = 0
    tus_expired: list[str] = field(default_factory=list)


def _age(services_storage: object, key: str) -> float:
    try:
        meta = services_storage.head(key).metadata  # type: ignore[attr-defined]
    except ObjectNotFoundError:
        return 0.0
    try:
        return time.time() - float(meta.get("created", "0"))
    except ValueError:
        return float("inf")


def reconcile(services: Services, *, scan_inline: bool = False,
              orphan_age: float | None = None, reclaim_leases: bool = False) -> Report:
    """``reclaim_leases``: re-queue every pending scan, leased or not, and
    break the leases (at the start of the only worker of an embedded instance,
    whose predecessor may have died mid-scan).  With a shared queue and many
    workers a lease is left to expire: its worker may be alive elsewhere."""
    report = Report()
    if orphan_age is None:
        orphan_age = services.settings.orphan_age_seconds
    partial_age = services.settings.partial_age_seconds
    # A disposal interrupted after its commit (key destroyed, object still
    # there) is finished first, so the loop below sees no stale owner.
    finish_pending(services)
    # Protected uploads kept for their password: past their time (or once the
    # office turned the setting off) the encrypted copy goes, audited.
    expire_kept(services)
    now = utcnow()
    with services.sessions() as db:
        due = db.execute(
            select(Upload.id).where(
                Upload.status.in_(list(PENDING_SCAN)),
                true() if reclaim_leases else
                or_(Upload.next_attempt_at.is_(None), Upload.next_attempt_at <= now),
            ).order_by(Upload.created_at).limit(500)
        ).scalars().all()
        leftovers = db.execute(
            select(Upload.id).where(Upload.status != Status.CLEAN,
                                    Upload.status.not_in(list(PENDING_SCAN)),
                                    Upload.dropzone_key.is_not(None),
                                    # kept for opening with its password (expire_kept)
                                    Upload.unlock_until.is_(None))
        ).scalars().all()
        known_dz = set(db.execute(select(Upload.dropzone_key)
                                  .where(Upload.dropzone_key.is_not(None))).scalars())
        committed_vault = dict(db.execute(
            select(Upload.id, Upload.vault_key).where(Upload.vault_key.is_not(None))).all())
        ids = set(db.execute(select(Upload.id)).scalars())
        staged = dict(db.execute(
            select(Upload.id, Upload.staged_key).where(Upload.staged_key.is_not(None))).all())
        scanning = set(db.execute(select(Upload.id).where(
            Upload.status.in_(list(PENDING_SCAN)))).scalars())

    if reclaim_leases and due:
        with services.sessions() as db, db.begin():
            db.execute(update(Upload).where(Upload.id.in_(list(due)))
                       .values(lease_until=None))
    for upload_id in due:
        report.rescanned.append(upload_id)
        if scan_inline:
            scan_upload(services, upload_id)
        else:
            services.enqueue.scan(upload_id)
    for upload_id in leftovers:
        _drop_dropzone_copy(services, upload_id)
        report.dropzone_cleaned.append(upload_id)

    for key in list(services.dropzone.keys("dz/")):
        if key not in known_dz and _age(services.dropzone, key) > orphan_age:
            services.dropzone.delete(key)
            report.orphans_deleted.append(key)
    for key in list(services.vault.keys("vault/")):
        upload_id = key.removeprefix("vault/").split(".", 1)[0]
        committed = committed_vault.get(upload_id)
        if committed == key:
            continue
        # A stale attempt: harmless while its pull may still commit, so wait.
        if committed is not None or upload_id not in ids or \
                _age(services.vault, key) > orphan_age:
            services.vault.delete(key)
            report.orphans_deleted.append(key)
    # Staged vault copies (portal.pipeline): one that its row does not name is
    # a leftover, unless its scan may still be running (then: once old enough).
    for key in list(services.vault.keys("staging/")):
        upload_id = key.removeprefix("staging/").split(".", 1)[0]
        if staged.get(upload_id) == key:
            continue
        if upload_id not in scanning or _age(services.vault, key) > orphan_age:
            services.vault.delete(key)
            report.orphans_deleted.append(key)
    # Resumable (tus) uploads: expire abandoned ones, finish complete ones a
    # request left behind, delete parts nobody owns (portal/tus.py).
    tus = tus_housekeeping(services, orphan_age=orphan_age)
    report.orphans_deleted += tus.orphans
    report.tus_expired += tus.expired
    report.partials_deleted = (services.dropzone.cleanup_partials(partial_age)
                               + services.vault.cleanup_partials(partial_age))
    if report.orphans_deleted or report.dropzone_cleaned:
        log.warning("reconcile repaired: %d orphan objects, %d drop-zone leftovers",
                    len(report.orphans_deleted), len(report.dropzone_cleaned))
    return report
