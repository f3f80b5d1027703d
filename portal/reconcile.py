"""Repair what a crash can leave behind.  Run at worker start and every minute.

* uploads waiting for a scan whose job was lost → scanned again;
* ``vaulted`` uploads whose drop-zone copy survived → copy deleted;
* drop-zone objects with no row (crash between commit and insert) and vault
  attempt objects never committed → deleted once old enough that no request
  or pull can still be about to claim them;
* abandoned partial writes → deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from storage.errors import ObjectNotFoundError

from .disposal import finish_pending
from .models import PENDING_SCAN, Status, Upload, utcnow
from .pipeline import _drop_dropzone_copy, scan_upload
from .services import Services

log = logging.getLogger(__name__)

ORPHAN_AGE_S = 3600.0
PARTIAL_AGE_S = 24 * 3600.0  # an upload may take hours on a slow line


@dataclass
class Report:
    rescanned: list[str] = field(default_factory=list)
    dropzone_cleaned: list[str] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    partials_deleted: int = 0


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
              orphan_age: float = ORPHAN_AGE_S) -> Report:
    report = Report()
    # A disposal interrupted after its commit (key destroyed, object still
    # there) is finished first, so the loop below sees no stale owner.
    finish_pending(services)
    now = utcnow()
    with services.sessions() as db:
        due = db.execute(
            select(Upload.id).where(
                Upload.status.in_(list(PENDING_SCAN)),
                or_(Upload.next_attempt_at.is_(None), Upload.next_attempt_at <= now),
            ).order_by(Upload.created_at).limit(500)
        ).scalars().all()
        leftovers = db.execute(
            select(Upload.id).where(Upload.status != Status.CLEAN,
                                    Upload.status.not_in(list(PENDING_SCAN)),
                                    Upload.dropzone_key.is_not(None))
        ).scalars().all()
        known_dz = set(db.execute(select(Upload.dropzone_key)
                                  .where(Upload.dropzone_key.is_not(None))).scalars())
        committed_vault = dict(db.execute(
            select(Upload.id, Upload.vault_key).where(Upload.vault_key.is_not(None))).all())
        ids = set(db.execute(select(Upload.id)).scalars())

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
    report.partials_deleted = (services.dropzone.cleanup_partials(PARTIAL_AGE_S)
                               + services.vault.cleanup_partials(PARTIAL_AGE_S))
    if report.orphans_deleted or report.dropzone_cleaned:
        log.warning("reconcile repaired: %d orphan objects, %d drop-zone leftovers",
                    len(report.orphans_deleted), len(report.dropzone_cleaned))
    return report
