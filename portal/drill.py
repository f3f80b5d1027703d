"""The restore drill: every vaulted file still decrypts to its SHA-256.

``kinko vault verify`` runs it on a live instance or, the point of it, on one
restored from backups into an empty place (docs/deploy.md, "Backups"): it
proves that the database backup, the vault backup and the keys belong
together.  Each file is decrypted in memory, a segment at a time, only to be
hashed; nothing is written anywhere.  The audit record carries counts only.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import select

from storage.errors import StorageError

from .audit import Actor, Tag, record
from .models import Status, Upload
from .pipeline import PipelineError, open_vaulted
from .services import Services


@dataclass
class DrillReport:
    checked: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (upload id, problem)

    @property
    def ok(self) -> bool:
        return not self.failed


def _vaulted(services: Services, batch: int = 200) -> Iterator[Upload]:
    last = ""
    while True:
        with services.sessions() as db:
            rows = db.execute(select(Upload).where(
                Upload.status == Status.VAULTED, Upload.id > last)
                .order_by(Upload.id).limit(batch)).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def verify_vault(services: Services, actor: Actor) -> DrillReport:
    report = DrillReport()
    for upload in _vaulted(services):
        report.checked += 1
        digest = hashlib.sha256()
        size = 0
        try:
            with contextlib.closing(open_vaulted(services, upload)) as reader:
                for chunk in reader.iter_chunks(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except (PipelineError, StorageError, OSError, ValueError) as exc:
            report.failed.append((upload.id, type(exc).__name__))
            continue
        if digest.hexdigest() != upload.sha256 or size != upload.size:
            report.failed.append((upload.id, "digest mismatch"))
    with services.sessions() as db, db.begin():
        record(db, services.audit_key, Tag.VAULT_VERIFIED, actor,
               details={"checked": report.checked, "failed": len(report.failed)})
    return report
