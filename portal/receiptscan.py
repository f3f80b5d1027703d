"""Scanning an upload while it is received (the client app's half).

The client app has every plaintext chunk in hand as it seals it, so it also
hands it on to clamd: by the time the last byte has arrived, clamd has the
whole file and starts scanning it while the request commits the drop-zone
object and inserts the row.  Two ways, the first when it can:

* a memory file (:class:`scanners.clamd.FdScan`): each chunk is appended to an
  anonymous memfd, which is sealed after the last byte and passed to clamd
  over its unix socket (``zFILDES``).  clamd reads the bytes where they are.
  Only for a clamd on the same machine and an upload whose declared size fits
  in what is left of ``KINKO_SCAN_BUFFER_MB`` in this process (the same RAM
  clamd's temporary file would take, held here for at most the scan);
* a stream (``zINSTREAM``, :class:`scanners.clamd.StreamScan`): clamd receives
  the chunks through the socket as they arrive and spools them itself.

A thread of the client app then waits for clamd's answer and records it
on the row (``uploads.prescan*``); the worker's scan, which runs at the same
time (type policy, digest, staged vault copy, number report), takes that
answer instead of streaming the file to clamd a second time.

Fail closed, and never in the upload's way:

* feeding runs in the intake's sealing thread.  A memory file never waits
  for clamd; a stream waits only while clamd is more than ``MAX_PENDING``
  behind, at most ``STALL_S`` in one go.  If clamd stays behind, hangs up,
  or cannot be reached, or the memory file cannot grow, the scan is
  abandoned and the worker scans the stored copy as before (``prescan``
  NULL, or ``failed``);
* the answer is recorded only for a stream that was sent whole (a memory file
  sealed at the full size), and only ``stream: OK`` (``fd[N]: OK``) is
  ``clean`` (:func:`scanners.clamd.parse_scan_reply`);
* it is advice: the worker takes it only for bytes whose digest is the one
  recorded at upload (the same bytes the client app sealed and streamed),
  waits for it at most until ``prescan_until``, and then scans itself;
* at most ``KINKO_SCAN_ON_RECEIPT`` uploads per process are scanned this way
  (each holds a clamd connection or a memory file and, after the body, one
  waiting thread).

Nothing of the content is logged; the reasons logged are exception names.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import update

from scanners.clamd import FdScan, StreamScan
from scanners.errors import ScannerError

from .faults import checkpoint
from .models import Upload, utcnow
from .services import Services

log = logging.getLogger(__name__)
MAX_PENDING = 128 << 10  # bytes clamd may lag behind the upload before it is waited for
STALL_S = 2.0  # ... at most this long in one go; then the worker scans instead
_GRACE = timedelta(seconds=5)  # after clamd's deadline: the row update itself

_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def _slot(limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


class MemoryBudget:
    """Bytes of memory files this process may hold at once (``KINKO_SCAN_BUFFER_MB``)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, size: int) -> bool:
        with self._lock:
            if size <= 0 or self._used + size > self.total:
                return False
            self._used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._used -= size
            assert self._used >= 0


_budgets: dict[int, MemoryBudget] = {}


def memory_budget(total: int) -> MemoryBudget:
    with _slots_lock:
        return _budgets.setdefault(total, MemoryBudget(total))


class ReceiptScan:
    """One upload's stream to clamd.  Use :meth:`start`; then ``feed`` each chunk,
    ``finish`` once the object is committed, ``registered`` once the row exists
    (or ``cancel`` if it never will)."""

    def __init__(self, services: Services, stream: StreamScan | FdScan,
                 slot: threading.BoundedSemaphore, reserved: int = 0) -> None:
        self._services = services
        self._stream = stream
        self._slot: threading.BoundedSemaphore | None = slot
        self._reserved = reserved  # bytes of the memory budget (FdScan), given back once
        self._row = threading.Event()
        self._cancelled = False
        self._upload_id: str | None = None
        self.until: datetime | None = None

    @classmethod
    def start(cls, services: Services, size_hint: int | None = None) -> ReceiptScan | None:
        """A new scan under way, or None (off, no free slot, clamd unreachable).

        ``size_hint``: the most bytes the upload can have (its declared length), if
        known; it decides whether a memory file may hold it."""
        limit = services.settings.scan_on_receipt
        if limit <= 0:
            return None
        slot = _slot(limit)
        if not slot.acquire(blocking=False):
            return None
        try:
            client = services.scanner()
            if client is None:
                raise ScannerError("no clamd configured")
            budget = memory_budget(services.settings.scan_buffer_bytes)
            if size_hint is not None and client.passes_fds and budget.take(size_hint):
                try:
                    return cls(services, FdScan(client, max_bytes=size_hint), slot, size_hint)
                except ScannerError as exc:
                    budget.give(size_hint)
                    log.info("no memory file for the scan (%s)", type(exc).__name__)
            stream = StreamScan(client, max_pending=MAX_PENDING, stall=STALL_S)
        except (ScannerError, OSError, ValueError) as exc:
            slot.release()
            log.info("no scan while receiving (%s)", type(exc).__name__)
            return None
        return cls(services, stream, slot)

    @property
    def in_memory(self) -> bool:
        """True if clamd gets a memory file (FILDES) rather than a stream."""
        return isinstance(self._stream, FdScan)

    @property
    def live(self) -> bool:
        """True while the stream can still give a verdict."""
        return self._stream.failed is None and not self._cancelled

    def feed(self, data: bytes) -> None:
        if self.live and not self._stream.feed(data):
            log.info("scan while receiving abandoned (%s)", self._stream.failed)
            self._release()

    def finish(self, upload_id: str, size: int) -> None:
        """The body (``size`` bytes) is complete: let clamd scan, wait for it in a thread.

        Sets :attr:`until` (the row's ``prescan_until``) when a verdict may follow."""
        if self.live and self._stream.sent != size:
            # Cannot happen (every byte sealed is fed); if it did, the answer
            # would not be about the stored file.
            log.error("scan while receiving saw %d of %d bytes", self._stream.sent, size)
            self._stream.abandon("short")
        if not self.live:
            self.cancel()
            return
        self._upload_id = upload_id
        self.until = utcnow() + timedelta(seconds=self._services.settings.scan_timeout) + _GRACE
        thread = threading.Thread(target=self._wait, name=f"kinko-rscan-{upload_id[:8]}",
                                  daemon=True)
        thread.start()

    def registered(self) -> None:
        """The row (``prescan='pending'``) is committed: the answer may be recorded."""
        self._row.set()

    def cancel(self) -> None:
        """No row will come (refused, failed): drop the stream."""
        self._cancelled = True
        self._stream.abandon("cancelled")
        self._row.set()
        self._release()

    def _release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            # Every caller comes after the scan is over (answered, or abandoned),
            # so a memory file is already closed when its budget is given back.
            if self._reserved:
                memory_budget(self._services.settings.scan_buffer_bytes).give(self._reserved)
                self._reserved = 0
            slot.release()

    def _wait(self) -> None:
        try:
            try:
                result = self._stream.result()
                values = {"prescan": result.verdict, "prescan_reason": result.reason,
                          "prescan_signature": (result.signature or "")[:200] or None}
            except ScannerError as exc:
                log.info("scan while receiving gave no verdict (%s)", type(exc).__name__)
                values = {"prescan": "failed"}
            assert self.until is not None
            left = (self.until - utcnow()).total_seconds()
            if not self._row.wait(timeout=max(0.0, left)) or self._cancelled:
                return
            checkpoint("receipt:answered")  # tests: the client app dies with the answer
            with self._services.sessions() as db, db.begin():
                db.execute(update(Upload).where(Upload.id == self._upload_id,
                                                Upload.prescan == "pending")
                           .values(**values))
        except Exception as exc:  # noqa: BLE001 - the worker scans itself by the deadline
            log.warning("could not record the scan while receiving (%s)", type(exc).__name__)
        finally:
            self._release()
