"""The invariants every fault test ends with, checked over the database, the
drop zone and the vault of a real stack (after the reconciler has run):

* every upload is in exactly one known state, and its objects say the same:
  ``received``/``scanning``/``clean`` = one drop-zone object that decrypts (drop-zone
  key) to the recorded SHA-256 and size, no vault object; ``vaulted`` = exactly one
  vault object, the committed one, that decrypts (office vault key and the row's
  wrapped key) to the recorded SHA-256 and size, no drop-zone object; a ``clean``
  upload may also have the one staged vault copy its row names (``staged_key``, made
  by the scan), which must decrypt to the same digest;
  ``infected``/``refused``/``disposed`` = no object anywhere;
* no orphans: no drop-zone or vault object without the row that names it, no
  partial write left behind;
* no duplicates: no two rows share an object, no upload has two vault objects,
  and (when the test says which bodies it sent) each body is stored at most once;
* no plaintext: the test's marker bytes are in no file under the stack's base
  directory (instance, storage, clamd), the temp directory or /dev/shm, and in
  no stored object;
* ``kinko audit verify`` passes.

The objects are read through the real storage backends and keys of an office
process built here, so the check reads S3 as well as local folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import select

from portal.models import Status, Upload, UploadEvent
from portal.services import Services, build_services
from portal.settings import Settings
from storage.envelope import open_envelope

from .harness import Stack

TRANSIENT = {Status.RECEIVED, Status.SCANNING, Status.CLEAN}
GONE = {Status.INFECTED, Status.REFUSED, Status.DISPOSED}
PENDING = {Status.RECEIVED, Status.SCANNING}


@dataclass
class Report:
    by_status: Counter[str] = field(default_factory=Counter)
    dropzone_objects: int = 0
    vault_objects: int = 0
    verified: int = 0


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """boto3 reads AWS_* from os.environ: give it the stack's for a moment."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def office_services(stack: Stack) -> Services:
    with _environ(stack.env):
        return build_services(Settings.from_env(stack.env), "office")


def settle(stack: Stack, timeout: float = 90) -> None:
    """Wait until no upload waits for a scan (the worker is idle), bounded."""
    svc = office_services(stack)
    deadline = time.monotonic() + timeout
    while True:
        with svc.sessions() as db:
            pending = db.execute(select(Upload.id, Upload.status)
                                 .where(Upload.status.in_(list(PENDING)))).all()
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} uploads still waiting for a scan: "
                                 f"{pending[:5]}\n{stack.log_tail()}")
        time.sleep(0.3)


def run_reconcile(stack: Stack, orphan_age: float = 0, partial_age: float = 0) -> str:
    """``kinko reconcile`` with the orphan and partial thresholds at ``*_age``:
    call it only while no upload or pull is in flight (a threshold of 0 would
    otherwise take an object that is about to be claimed)."""
    env = dict(stack.env, KINKO_ORPHAN_AGE_SECONDS=str(orphan_age),
               KINKO_PARTIAL_AGE_SECONDS=str(partial_age))
    return stack.kinko("reconcile", env=env).stdout


def _digest(reader: Any) -> tuple[str, int]:
    sha = hashlib.sha256()
    n = 0
    try:
        for chunk in reader.iter_chunks(1 << 20):
            sha.update(chunk)
            n += len(chunk)
    finally:
        reader.close()
    return sha.hexdigest(), n


def _local_root(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def files_containing(roots: Iterable[Path], needles: list[bytes],
                     skip: Iterable[Path] = ()) -> list[Path]:
    """Files under ``roots`` holding any of ``needles`` (chunked, overlap kept)."""
    skipped = {os.path.realpath(p) for p in skip}
    longest = max(len(n) for n in needles)
    hits: list[Path] = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames
                           if os.path.realpath(os.path.join(dirpath, d)) not in skipped]
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    if path.is_symlink() or not path.is_file():
                        continue
                    with path.open("rb") as fh:
                        tail = b""
                        while chunk := fh.read(1 << 20):
                            window = tail + chunk
                            if any(n in window for n in needles):
                                hits.append(path)
                                break
                            tail = chunk[-longest:]
                except OSError:
                    continue
    return hits


def plaintext_roots(stack: Stack) -> tuple[list[Path], list[Path]]:
    """Where the stack may write (its base: instance, storage, clamd), the temp
    directory and /dev/shm (clamd spools there) — and what to leave out: the
    other test stacks under the temp directory, which never saw our bytes."""
    tmp = Path(tempfile.gettempdir())
    roots = [stack.base, tmp, Path("/dev/shm")]
    skip = [p for p in tmp.glob("kt-*") if p.resolve() != stack.base.resolve()]
    skip.append(stack.base)  # walked once, as its own root
    skip += [p for p in tmp.glob("bash_jobs*")]
    return roots, skip


def check_invariants(stack: Stack, *, markers: Iterable[bytes] = (),
                     digests: Iterable[str] = (), reconcile: bool = True,
                     wait: bool = True) -> Report:
    """Assert every invariant of the module docstring; return what was seen.

    ``markers``: byte strings the test uploaded that must be nowhere at rest.
    ``digests``: SHA-256 of bodies the test sent; each may be stored at most once.
    ``reconcile``: run the reconciler first (orphans and partials of any age).
    """
    if wait:
        settle(stack)
    if reconcile:
        run_reconcile(stack)
    svc = office_services(stack)
    report = Report()
    with svc.sessions() as db:
        rows = db.execute(select(Upload)).scalars().all()
        last_event = dict(db.execute(
            select(UploadEvent.upload_id, UploadEvent.status)
            .order_by(UploadEvent.upload_id, UploadEvent.id)).all())
    with _environ(stack.env):
        dz_keys = set(svc.dropzone.keys(""))
        vault_keys = set(svc.vault.keys(""))
    report.dropzone_objects, report.vault_objects = len(dz_keys), len(vault_keys)
    known = {s.value for s in Status}
    problems: list[str] = []

    # tus/ parts belong to resumable uploads (portal/tus.py, its own housekeeping);
    # they are still searched for plaintext below.
    dz_keys = {k for k in dz_keys if not k.startswith("tus/")}
    dz_owner = Counter(u.dropzone_key for u in rows if u.dropzone_key)
    vault_owner = Counter(u.vault_key for u in rows if u.vault_key)
    vault_owner.update(k for u in rows if (k := getattr(u, "staged_key", None)))
    problems += [f"two rows name drop-zone object {k}" for k, n in dz_owner.items() if n > 1]
    problems += [f"two rows name vault object {k}" for k, n in vault_owner.items() if n > 1]

    for u in rows:
        report.by_status[u.status] += 1
        mine_dz = {k for k in dz_keys if k == f"dz/{u.id}" or k == u.dropzone_key}
        mine_vault = {k for k in vault_keys if k.startswith(f"vault/{u.id}.")}
        staged = {k for k in vault_keys if k.startswith(f"staging/{u.id}.")}
        staged_key = getattr(u, "staged_key", None)
        if staged - ({staged_key} if u.status == Status.CLEAN else set()):
            problems.append(f"{u.id} ({u.status}): staged copies {sorted(staged)}")
        elif staged and staged_key:
            with _environ(stack.env):
                # Sealed under the name it will have once the pull promotes it.
                oid = "vault/" + staged_key.removeprefix("staging/")
                got = _digest(open_envelope(svc.vault.open(staged_key), oid,
                                            unwrapper=svc.vault_private,
                                            wrapped_key=u.staged_wrapped_key))
            if got != (u.sha256, u.size):
                problems.append(f"{u.id}: staged copy does not decrypt to its digest")
        if u.status not in known:
            problems.append(f"{u.id}: unknown status {u.status!r}")
            continue
        if last_event.get(u.id) != u.status:
            problems.append(f"{u.id}: row says {u.status}, last event {last_event.get(u.id)}")
        if u.status in TRANSIENT:
            if mine_vault:
                problems.append(f"{u.id} ({u.status}): vault objects {sorted(mine_vault)}")
            if u.dropzone_key is None or mine_dz != {u.dropzone_key}:
                problems.append(f"{u.id} ({u.status}): drop-zone objects {sorted(mine_dz)} "
                                f"for key {u.dropzone_key}")
                continue
            with _environ(stack.env):
                got = _digest(open_envelope(svc.dropzone.open(u.dropzone_key), u.dropzone_key,
                                            unwrapper=svc.dropzone_key))
            if got != (u.sha256, u.size):
                problems.append(f"{u.id}: drop-zone object does not decrypt to its digest")
            else:
                report.verified += 1
        elif u.status == Status.VAULTED:
            if mine_dz or u.dropzone_key is not None:
                problems.append(f"{u.id} (vaulted): drop-zone copy {sorted(mine_dz)} "
                                f"/ {u.dropzone_key}")
            if u.vault_key is None or mine_vault != {u.vault_key} or not u.vault_wrapped_key:
                problems.append(f"{u.id} (vaulted): vault objects {sorted(mine_vault)} "
                                f"for committed {u.vault_key}")
                continue
            with _environ(stack.env):
                got = _digest(open_envelope(svc.vault.open(u.vault_key), u.vault_key,
                                            unwrapper=svc.vault_private,
                                            wrapped_key=u.vault_wrapped_key))
            if got != (u.sha256, u.size):
                problems.append(f"{u.id}: vault object does not decrypt to its digest")
            else:
                report.verified += 1
        else:
            assert u.status in GONE
            if mine_dz or mine_vault:
                problems.append(f"{u.id} ({u.status}): objects left {sorted(mine_dz | mine_vault)}")

    named = set(dz_owner) | set(vault_owner)
    problems += [f"orphan object {k}" for k in sorted((dz_keys | vault_keys) - named)]
    for url in (svc.settings.dropzone_url, svc.settings.vault_url):
        root = _local_root(url)
        if root is not None and reconcile:
            left = [p.name for p in (root / "partial").iterdir()]
            if left:
                problems.append(f"partial writes left in {root}: {left}")

    bodies = Counter(u.sha256 for u in rows)
    for digest in digests:
        if bodies[digest] > 1:
            problems.append(f"body {digest[:12]}… stored {bodies[digest]} times")

    needles = [m for m in markers if m]
    if needles:
        roots, skip = plaintext_roots(stack)
        problems += [f"plaintext marker in {p}" for p in files_containing(roots, needles, skip)]
        with _environ(stack.env):
            for storage, keys in ((svc.dropzone, dz_keys), (svc.vault, vault_keys)):
                for key in keys:
                    with contextlib.closing(storage.open(key)) as fh:
                        blob = fh.read()
                    if any(n in blob for n in needles):
                        problems.append(f"plaintext marker in stored object {key}")

    assert not problems, "invariants broken:\n" + "\n".join(problems[:40])
    stack.kinko("audit", "verify")
    return report
