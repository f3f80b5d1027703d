"""Minimal, fail-closed client for ClamAV's clamd (``INSTREAM`` over unix or TCP sockets,
and ``FILDES`` of a sealed memory file over a unix socket).

Security invariant: the only way to obtain a ``clean`` :class:`ScanResult` is the exact
reply ``stream: OK`` to a complete ``zINSTREAM`` session, or ``fd[N]: OK`` to a
``zFILDES`` of a memory file sealed at its full length (:class:`FdScan`).  Everything
else is either a non-clean verdict or :class:`~scanners.errors.ScannerUnavailableError`
("not scanned yet").
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from scanners.errors import ScannerError, ScannerUnavailableError

__all__ = ["ClamdClient", "FdScan", "ScanResult", "StreamScan", "parse_scan_reply"]

Verdict = Literal["clean", "infected", "refused"]

# Replies are a signature name or a short error; anything longer is garbage and must not
# let a hostile/broken peer make us buffer unbounded data.
_MAX_REPLY = 64 * 1024
_FOUND_RE = re.compile(r"stream: (?P<sig>\S(?:.*\S)?) FOUND")
# FILDES replies name the descriptor as clamd numbered it: ``fd[12]: OK``.
_FD_SUBJECT_RE = re.compile(r"fd\[[0-9]{1,9}\]: ")
_TCP_RE = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class ScanResult:
    """Verdict of one scan.

    ``reason`` is a stable machine code: ``None`` for clean, ``"malware"`` for infected,
    ``"encrypted"`` or ``"scan_limits"`` for refused (clamd could not look inside).
    """

    verdict: Verdict
    signature: str | None
    reason: str | None

    @property
    def is_clean(self) -> bool:
        """True only for an explicit clean verdict."""
        return self.verdict == "clean"


def _classify(signature: str) -> ScanResult:
    # Encrypted content and exceeded limits mean clamd did NOT inspect everything: that is
    # not malware, but it must never be passed as clean either -> "refused".
    if signature.startswith("Heuristics.Encrypted"):
        return ScanResult("refused", signature, "encrypted")
    if signature.startswith(("Heuristics.Limits.", "Heuristics.Exceeds")):
        return ScanResult("refused", signature, "scan_limits")
    return ScanResult("infected", signature, "malware")


def parse_scan_reply(raw: bytes, *, fildes: bool = False) -> ScanResult:
    """Parse one clamd reply to ``INSTREAM`` (or, with ``fildes``, to ``FILDES``).

    Raises ScannerUnavailableError for ``... ERROR`` replies and anything not understood.
    Invariant: only the exact text ``stream: OK`` (``fd[N]: OK`` for ``FILDES``) yields
    a clean result.
    """
    try:
        text = raw.rstrip(b"\0\r\n").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScannerUnavailableError(f"undecodable clamd reply: {raw[:200]!r}") from exc
    if fildes:
        # The same reply grammar, about "fd[N]" instead of "stream".
        subject = _FD_SUBJECT_RE.match(text)
        if subject is None:
            raise ScannerUnavailableError(f"unexpected clamd reply: {text[:200]!r}")
        text = "stream: " + text[subject.end():]
    if text == "stream: OK":
        return ScanResult("clean", None, None)
    match = _FOUND_RE.fullmatch(text)
    if match is not None and "\n" not in text and "\0" not in text:
        return _classify(match.group("sig"))
    if text.endswith("ERROR"):
        raise ScannerUnavailableError(f"clamd error: {text[:200]}")
    raise ScannerUnavailableError(f"unexpected clamd reply: {text[:200]!r}")


def _parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/") or "\0" in path or len(path.encode()) > 107:
            raise ValueError(f"invalid unix socket address: {address!r}")
        return socket.AF_UNIX, path
    match = _TCP_RE.fullmatch(address)
    if match is None:
        raise ValueError(
            f"invalid clamd address (want unix:///path or tcp://host:port): {address!r}"
        )
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid TCP port in {address!r}")
    host = match.group("host")
    if host.startswith("["):
        return socket.AF_INET6, (host[1:-1], port)
    return socket.AF_INET, (host, port)


class _Deadline:
    """Overall deadline; every socket operation gets at most the remaining time."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise ScannerUnavailableError("clamd deadline exceeded")
        return left


class ClamdClient:
    """Talks to one clamd instance.  Holds no connection between calls (thread-safe).

    ``address`` is ``unix:///abs/path.sock`` or ``tcp://host:port`` (ValueError otherwise).
    ``timeout`` bounds each call as a whole, and each socket operation within it.
    """

    def __init__(self, address: str, *, timeout: float = 60.0, chunk_size: int = 1 << 20) -> None:
        self._family, self._sockaddr = _parse_address(address)
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if not 0 < chunk_size < 1 << 32:
            raise ValueError("chunk_size must be in 1 .. 2**32-1")
        self.address = address
        self.timeout = float(timeout)
        self.chunk_size = int(chunk_size)

    def __repr__(self) -> str:
        return f"ClamdClient({self.address!r}, timeout={self.timeout})"

    @property
    def passes_fds(self) -> bool:
        """True if descriptors can be handed over (``FILDES``): a unix socket only."""
        return self._family == socket.AF_UNIX

    # -- connection helpers -------------------------------------------------------------

    def _connect(self, deadline: _Deadline) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(self._sockaddr)
        except OSError as exc:
            sock.close()
            raise ScannerUnavailableError(
                f"cannot connect to clamd at {self.address}: {exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _read_reply(sock: socket.socket, deadline: _Deadline) -> bytes:
        """Read a NUL-terminated reply (or up to EOF).  Raises ScannerUnavailableError."""
        buf = bytearray()
        while b"\0" not in buf:
            try:
                sock.settimeout(deadline.remaining())
                data = sock.recv(4096)
            except OSError as exc:
                raise ScannerUnavailableError(f"reading clamd reply failed: {exc}") from exc
            if not data:
                break
            buf += data
            if len(buf) > _MAX_REPLY:
                raise ScannerUnavailableError("clamd reply too long")
        if not buf:
            raise ScannerUnavailableError("clamd closed the connection without a reply")
        return bytes(buf.split(b"\0", 1)[0])

    def _simple_command(self, command: bytes) -> bytes:
        deadline = _Deadline(self.timeout)
        with self._connect(deadline) as sock:
            try:
                sock.settimeout(deadline.remaining())
                sock.sendall(b"z" + command + b"\0")
            except OSError as exc:
                raise ScannerUnavailableError(f"sending to clamd failed: {exc}") from exc
            return self._read_reply(sock, deadline)

    # -- public API --------------------------------------------------------------------

    def ping(self) -> bool:
        """True iff clamd answers ``PONG`` in time.  Never raises."""
        try:
            return self._simple_command(b"PING").rstrip(b"\r\n") == b"PONG"
        except (ScannerError, OSError, ValueError):
            return False

    def version(self) -> str:
        """Raw ``VERSION`` reply (e.g. ``ClamAV 1.4.6/27000/...``).

        Raises ScannerUnavailableError on any failure or a reply not starting ``ClamAV ``.
        """
        raw = self._simple_command(b"VERSION").rstrip(b"\r\n")
        text = raw.decode("utf-8", errors="replace")
        if not text.startswith("ClamAV "):
            raise ScannerUnavailableError(f"unexpected VERSION reply: {text[:200]!r}")
        return text

    def scan_bytes(self, data: bytes) -> ScanResult:
        """Scan an in-memory buffer; same contract as :meth:`scan_stream`."""
        return self.scan_stream([data])

    def _frames(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        size = self.chunk_size
        for chunk in chunks:
            view = memoryview(chunk)
            # An empty chunk would be read by clamd as the end-of-stream marker and let
            # the rest of the file go unscanned: skip it.
            for start in range(0, len(view), size):
                piece = view[start : start + size]
                yield struct.pack(">I", len(piece)) + piece.tobytes()

    def scan_stream(self, chunks: Iterable[bytes]) -> ScanResult:
        """Scan the concatenation of ``chunks`` with ``zINSTREAM``.

        Returns a ScanResult (clean only for the exact reply ``stream: OK``).  Raises
        ScannerUnavailableError if clamd is unreachable, times out (``timeout`` is the
        overall deadline, including time spent producing ``chunks``), closes the
        connection, or answers an error such as ``INSTREAM size limit exceeded``.
        Exceptions raised by ``chunks`` itself propagate unchanged.
        """
        deadline = _Deadline(self.timeout)
        with self._connect(deadline) as sock:
            try:
                sock.settimeout(deadline.remaining())
                sock.sendall(b"zINSTREAM\0")
                for frame in self._frames(chunks):
                    sock.settimeout(deadline.remaining())
                    sock.sendall(frame)
                sock.settimeout(deadline.remaining())
                sock.sendall(struct.pack(">I", 0))
            except (BrokenPipeError, ConnectionResetError) as exc:
                # clamd hangs up early, e.g. after StreamMaxLength; its reply (usually an
                # ERROR) may still be readable.  A non-clean verdict is kept, but "OK" for a
                # stream we could not finish sending covers unscanned bytes: not clean.
                try:
                    result = parse_scan_reply(self._read_reply(sock, deadline))
                except ScannerUnavailableError as inner:
                    raise ScannerUnavailableError(
                        f"clamd closed the connection mid-stream: {inner}"
                    ) from exc
                if result.is_clean:
                    raise ScannerUnavailableError(
                        "clamd said OK before the whole stream was sent"
                    ) from exc
                return result
            except OSError as exc:
                raise ScannerUnavailableError(f"sending to clamd failed: {exc}") from exc
            return parse_scan_reply(self._read_reply(sock, deadline))


class StreamScan:
    """One ``zINSTREAM`` session fed as the bytes arrive, without ever blocking the feeder.

    Made for scanning an upload *while it is received*: :meth:`feed` hands each chunk to
    the socket without blocking (what clamd has not taken yet waits in a buffer of at
    most ``max_pending`` bytes); when clamd falls behind further than that, the feeder
    waits for it, but never longer than ``stall`` seconds in one go.  When clamd stays
    behind past that, or hangs up, or anything else goes wrong, the session is
    *abandoned* (:attr:`failed` says why) and can never yield a verdict: the caller
    scans the stored copy later instead.
    :meth:`result` (blocking, bounded by the client's timeout from the moment it is
    called) sends the rest and the end-of-stream marker and parses the reply with
    :func:`parse_scan_reply`, so the only clean outcome is still ``stream: OK`` for a
    stream that was sent whole.  Not thread-safe: one feeder, then one caller of
    :meth:`result` (which may be another thread).
    """

    def __init__(self, client: ClamdClient, *, max_pending: int = 1 << 20,
                 stall: float = 0.0, connect_timeout: float = 2.0) -> None:
        self._client = client
        self._max_pending = max_pending
        self._stall = stall
        self._pending = bytearray()
        self.failed: str | None = None
        self.sent = 0
        deadline = _Deadline(min(connect_timeout, client.timeout))
        self._sock: socket.socket | None = client._connect(deadline)
        try:
            self._sock.settimeout(deadline.remaining())
            self._sock.sendall(b"zINSTREAM\0")
            self._sock.setblocking(False)
        except (OSError, ScannerError) as exc:
            self._sock.close()
            self._sock = None
            raise ScannerUnavailableError(f"sending to clamd failed: {exc}") from exc

    def feed(self, data: bytes) -> bool:
        """Queue ``data`` for clamd; False once the session is abandoned.

        Blocks only while more than ``max_pending`` bytes wait, at most ``stall`` s."""
        if self.failed is not None or not data:
            return self.failed is None
        size = self._client.chunk_size
        view = memoryview(data)
        for start in range(0, len(view), size):
            self._send_frame(view[start : start + size])
            if self.failed is not None:
                return False
        self.sent += len(data)
        if len(self._pending) > self._max_pending:
            self._catch_up()
        return self.failed is None

    def _send_frame(self, piece: memoryview) -> None:
        """Send one frame; only what the socket does not take now is copied aside."""
        header = struct.pack(">I", len(piece))
        if self._pending:
            self._pending += header
            self._pending += piece
            self._drain()
            return
        assert self._sock is not None
        try:
            sent = self._sock.sendmsg([header, piece])  # gathered: no copy of the chunk
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # clamd hung up (StreamMaxLength, restart ...)
            self.abandon(type(exc).__name__)
            return
        if sent < len(header):
            self._pending += header[sent:]
            self._pending += piece
        elif sent < len(header) + len(piece):
            self._pending += piece[sent - len(header):]

    def _catch_up(self) -> None:
        """Wait (at most ``stall`` s) until clamd has taken all but ``max_pending``."""
        assert self._sock is not None
        deadline = time.monotonic() + self._stall
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        while self.failed is None and len(self._pending) > self._max_pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.abandon("backpressure")
                return
            if poller.poll(left * 1000):
                self._drain()

    def _drain(self) -> None:
        assert self._sock is not None
        try:
            while self._pending:
                n = self._sock.send(self._pending)
                del self._pending[:n]
        except BlockingIOError:
            return
        except OSError as exc:  # clamd hung up (StreamMaxLength, restart ...)
            self.abandon(type(exc).__name__)

    def abandon(self, why: str) -> None:
        """Give up: close the connection (clamd discards what it was sent)."""
        if self.failed is None:
            self.failed = why
        self._pending = bytearray()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def result(self) -> ScanResult:
        """Finish the stream and wait for clamd's verdict (at most the client's timeout).

        Raises ScannerUnavailableError if the session was abandoned or anything fails.
        """
        if self.failed is not None or self._sock is None:
            raise ScannerUnavailableError(f"stream scan abandoned: {self.failed}")
        sock, deadline = self._sock, _Deadline(self._client.timeout)
        try:
            sock.settimeout(deadline.remaining())
            sock.sendall(bytes(self._pending) + struct.pack(">I", 0))
            self._pending = bytearray()
            return parse_scan_reply(self._client._read_reply(sock, deadline))
        except OSError as exc:
            raise ScannerUnavailableError(f"sending to clamd failed: {exc}") from exc
        finally:
            self.abandon("finished")


# Seals that make a memory file immutable: no write, no resize, no more seals.
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class FdScan:
    """One upload's bytes in an anonymous memory file, handed to clamd with ``zFILDES``.

    The same surface as :class:`StreamScan` (``feed``, ``sent``, ``failed``,
    ``abandon``, ``result``), for a clamd on the same machine (unix socket).  Each
    chunk is written to a ``memfd`` (RAM, no name, no path, closed on exec): it never
    waits for clamd.  :meth:`result` seals the file at its full length (no further
    write, shrink or growth), checks that it holds exactly what was fed, passes the
    descriptor to clamd over the socket and parses the reply.  clamd scans the bytes
    where they are, instead of receiving them through the socket and writing them to a
    temporary file of its own first (what ``INSTREAM`` makes it do): the same RAM,
    two copies fewer (docs/performance.md).

    At most ``max_bytes`` may be fed; more abandons the session (the caller scans the
    stored copy later), as does any write error (ENOMEM, ENOSPC under a memory limit).
    One feeder, then one caller of :meth:`result` (which may be another thread);
    :meth:`abandon` may come from any thread at any time (a descriptor is never used
    after it is closed).  The memory file is closed by :meth:`result` and by
    :meth:`abandon`; a process that dies frees it with its descriptors.
    """

    def __init__(self, client: ClamdClient, *, max_bytes: int) -> None:
        if not client.passes_fds:
            raise ScannerUnavailableError("FILDES needs clamd on a unix socket")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._client = client
        self._max = max_bytes
        self._lock = threading.Lock()
        self.failed: str | None = None
        self.sent = 0
        try:
            self._fd: int | None = os.memfd_create(
                "kinko-scan", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise ScannerUnavailableError(f"no memory file: {exc}") from exc

    def feed(self, data: bytes) -> bool:
        """Append ``data``; False once the session is abandoned.  Never waits for clamd."""
        if not data:
            return self.failed is None
        if self.sent + len(data) > self._max:
            self.abandon("over_limit")
            return False
        view = memoryview(data)
        with self._lock:
            if self.failed is not None or self._fd is None:
                return False
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:  # ENOMEM, ENOSPC (memory limit)
                self._close(type(exc).__name__)
                return False
        self.sent += len(data)
        return True

    def abandon(self, why: str) -> None:
        """Give up: free the memory file (no verdict can follow)."""
        with self._lock:
            self._close(why)

    def _close(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def result(self) -> ScanResult:
        """Seal the file, hand it to clamd and wait for the verdict (at most the
        client's timeout).  Raises ScannerUnavailableError if the session was abandoned
        or anything fails."""
        with self._lock:  # from here on this call owns the descriptor
            fd, self._fd = self._fd, None
            if self.failed is not None or fd is None:
                if fd is not None:
                    os.close(fd)
                raise ScannerUnavailableError(f"fd scan abandoned: {self.failed}")
        deadline = _Deadline(self._client.timeout)
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            # Sealed: clamd sees these bytes and no others, from offset 0 to the end.
            if os.fstat(fd).st_size != self.sent:
                raise ScannerUnavailableError("memory file does not hold what was fed")
            with self._client._connect(deadline) as sock:
                sock.settimeout(deadline.remaining())
                sock.sendall(b"zFILDES\0")
                sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", [fd]))])
                return parse_scan_reply(self._client._read_reply(sock, deadline),
                                        fildes=True)
        except OSError as exc:
            raise ScannerUnavailableError(f"handing the file to clamd failed: {exc}") from exc
        finally:
            os.close(fd)
            with self._lock:
                self._close("finished")  # one verdict per file
