"""ClamdClient protocol tests against an in-process fake clamd (unix socket, thread)."""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanners import ScannerError, ScannerUnavailableError
from scanners.clamd import ClamdClient, FdScan, ScanResult, parse_scan_reply

Behaviour = Callable[["FakeClamd", socket.socket], None]


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            raise EOFError
        buf += data
    return buf


class FakeClamd:
    """Accepts connections and runs ``behaviour`` on each; records what it received."""

    def __init__(self, behaviour: Behaviour, chunk_limit: int = 1 << 20) -> None:
        self.behaviour = behaviour
        self.chunk_limit = chunk_limit
        self.dir = Path(tempfile.mkdtemp(prefix="fkc-", dir="/tmp"))
        self.path = self.dir / "s"
        self.address = f"unix://{self.path}"
        self.commands: list[bytes] = []
        self.frames: list[int] = []
        self.payload = b""
        self.framing_errors: list[str] = []
        self.stop_event = threading.Event()
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(str(self.path))
        self._srv.listen(8)
        self._srv.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    self.behaviour(self, conn)
                except (OSError, EOFError):
                    pass

    def read_command(self, conn: socket.socket) -> bytes:
        buf = b""
        while not buf.endswith(b"\0"):
            buf += _recv_exact(conn, 1)
        self.commands.append(buf)
        return buf

    def read_stream(self, conn: socket.socket, limit: int | None = None) -> None:
        """Read INSTREAM frames (checking framing) until the terminator or ``limit``."""
        while True:
            (length,) = struct.unpack(">I", _recv_exact(conn, 4))
            if length == 0:
                return
            if length > self.chunk_limit:
                self.framing_errors.append(f"frame of {length} > {self.chunk_limit}")
            self.frames.append(length)
            self.payload += _recv_exact(conn, length)
            if limit is not None and len(self.payload) >= limit:
                return

    def close(self) -> None:
        self.stop_event.set()
        self._thread.join(5)
        self._srv.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def replying(reply: bytes) -> Behaviour:
    def behaviour(fake: FakeClamd, conn: socket.socket) -> None:
        command = fake.read_command(conn)
        if command == b"zINSTREAM\0":
            fake.read_stream(conn)
        conn.sendall(reply)

    return behaviour


@pytest.fixture
def fake_clamd() -> Iterator[Callable[..., FakeClamd]]:
    fakes: list[FakeClamd] = []

    def factory(behaviour: Behaviour, chunk_limit: int = 1 << 20) -> FakeClamd:
        fake = FakeClamd(behaviour, chunk_limit)
        fakes.append(fake)
        return fake

    yield factory
    for fake in fakes:
        fake.close()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"stream: OK\0", ScanResult("clean", None, None)),
        (b"stream: OK\n", ScanResult("clean", None, None)),
        (b"stream: Eicar-Signature FOUND\0", ScanResult("infected", "Eicar-Signature", "malware")),
        (
            b"stream: Heuristics.Encrypted.Zip FOUND\0",
            ScanResult("refused", "Heuristics.Encrypted.Zip", "encrypted"),
        ),
        (
            b"stream: Heuristics.Encrypted.PDF FOUND\0",
            ScanResult("refused", "Heuristics.Encrypted.PDF", "encrypted"),
        ),
        (
            b"stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND\0",
            ScanResult("refused", "Heuristics.Limits.Exceeded.MaxScanSize", "scan_limits"),
        ),
        (
            b"stream: Heuristics.Broken.Executable FOUND\0",
            ScanResult("infected", "Heuristics.Broken.Executable", "malware"),
        ),
    ],
)
def test_scan_replies(
    fake_clamd: Callable[..., FakeClamd], reply: bytes, expected: ScanResult
) -> None:
    fake = fake_clamd(replying(reply))
    assert ClamdClient(fake.address, timeout=5).scan_bytes(b"data") == expected
    assert fake.commands == [b"zINSTREAM\0"]
    assert fake.payload == b"data"


@pytest.mark.parametrize(
    "reply",
    [
        b"INSTREAM size limit exceeded. ERROR\0",
        b"stream: some error ERROR\0",
        b"UNKNOWN COMMAND\0",
        b"stream: OK extra\0",
        b"stream: ok\0",
        b" stream: OK\0",
        b"stream:OK\0",
        b"stream: FOUND\0",
        b"stream: OK\nstream: OK\0",
        b"stream: X FOUND\nstream: OK\0",
        b"\xff\xfe\0",
        b"",
    ],
)
def test_only_exact_ok_is_clean(fake_clamd: Callable[..., FakeClamd], reply: bytes) -> None:
    fake = fake_clamd(replying(reply))
    with pytest.raises(ScannerUnavailableError):
        ClamdClient(fake.address, timeout=5).scan_bytes(b"data")


def test_parse_reply_never_clean_for_garbage() -> None:
    import random

    rng = random.Random(1234)
    for _ in range(300):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        try:
            result = parse_scan_reply(raw)
        except ScannerUnavailableError:
            continue
        assert result.verdict != "clean"


def test_framing(fake_clamd: Callable[..., FakeClamd]) -> None:
    fake = fake_clamd(replying(b"stream: OK\0"), chunk_limit=1000)
    chunks = [b"", b"a" * 2500, b"", b"b", b"c" * 1000, bytearray(b"d" * 999)]
    result = ClamdClient(fake.address, timeout=5, chunk_size=1000).scan_stream(iter(chunks))
    assert result.verdict == "clean"
    assert fake.framing_errors == []
    assert fake.frames == [1000, 1000, 500, 1, 1000, 999]
    assert fake.payload == b"".join(chunks)


def test_empty_stream_sends_only_terminator(fake_clamd: Callable[..., FakeClamd]) -> None:
    fake = fake_clamd(replying(b"stream: OK\0"))
    ClamdClient(fake.address, timeout=5).scan_stream([])
    assert fake.frames == []


def test_ping_and_version(fake_clamd: Callable[..., FakeClamd]) -> None:
    def behaviour(fake: FakeClamd, conn: socket.socket) -> None:
        command = fake.read_command(conn)
        conn.sendall({b"zPING\0": b"PONG\0", b"zVERSION\0": b"ClamAV 1.4.6/27000/Mon\0"}[command])

    fake = fake_clamd(behaviour)
    client = ClamdClient(fake.address, timeout=5)
    assert client.ping() is True
    assert client.version() == "ClamAV 1.4.6/27000/Mon"


def test_ping_false_and_version_raises_on_garbage(fake_clamd: Callable[..., FakeClamd]) -> None:
    def behaviour(fake: FakeClamd, conn: socket.socket) -> None:
        fake.read_command(conn)
        conn.sendall(b"HELLO\0")

    client = ClamdClient(fake_clamd(behaviour).address, timeout=5)
    assert client.ping() is False
    with pytest.raises(ScannerUnavailableError):
        client.version()


def test_connection_refused_unix(tmp_path: Path) -> None:
    # A bound but not listening socket file: connect() gets ECONNREFUSED.
    directory = Path(tempfile.mkdtemp(prefix="fkc-", dir="/tmp"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(directory / "s"))
            client = ClamdClient(f"unix://{directory}/s", timeout=2)
            assert client.ping() is False
            with pytest.raises(ScannerUnavailableError):
                client.scan_bytes(b"x")
        missing = ClamdClient(f"unix://{directory}/missing", timeout=2)
        with pytest.raises(ScannerUnavailableError):
            missing.scan_bytes(b"x")
        with pytest.raises(ScannerUnavailableError):
            missing.version()
    finally:
        shutil.rmtree(directory)


def test_connection_refused_tcp() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ClamdClient(f"tcp://127.0.0.1:{port}", timeout=2)
    assert client.ping() is False
    with pytest.raises(ScannerUnavailableError):
        client.scan_bytes(b"x")


def _closing_after(reply: bytes) -> Behaviour:
    def behaviour(fake: FakeClamd, conn: socket.socket) -> None:
        fake.read_command(conn)
        fake.read_stream(conn, limit=10_000)
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_RDWR)

    return behaviour


@pytest.mark.parametrize(
    "reply", [b"", b"INSTREAM size limit exceeded. ERROR\0", b"stream: OK\0", b"garbage"]
)
def test_closed_mid_stream_is_unavailable(
    fake_clamd: Callable[..., FakeClamd], reply: bytes
) -> None:
    fake = fake_clamd(_closing_after(reply))
    client = ClamdClient(fake.address, timeout=5, chunk_size=4096)
    with pytest.raises(ScannerUnavailableError):
        client.scan_stream(b"x" * 4096 for _ in range(4096))  # 16 MiB, far more than read


def test_closed_mid_stream_keeps_infected_verdict(fake_clamd: Callable[..., FakeClamd]) -> None:
    fake = fake_clamd(_closing_after(b"stream: Evil FOUND\0"))
    client = ClamdClient(fake.address, timeout=5, chunk_size=4096)
    result = client.scan_stream(b"x" * 4096 for _ in range(4096))
    assert result == ScanResult("infected", "Evil", "malware")


@pytest.mark.parametrize("payload_size", [10, 32 << 20])
def test_never_answering_server_times_out(
    fake_clamd: Callable[..., FakeClamd], payload_size: int
) -> None:
    def behaviour(fake: FakeClamd, conn: socket.socket) -> None:
        fake.stop_event.wait(10)

    fake = fake_clamd(behaviour)
    client = ClamdClient(fake.address, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ScannerUnavailableError):
        client.scan_bytes(b"x" * payload_size)
    assert time.monotonic() - started < 2.5
    assert client.ping() is False


def test_overall_deadline_covers_slow_producer(fake_clamd: Callable[..., FakeClamd]) -> None:
    fake = fake_clamd(replying(b"stream: OK\0"))

    def slow() -> Iterator[bytes]:
        for _ in range(20):
            time.sleep(0.1)
            yield b"x"

    started = time.monotonic()
    with pytest.raises(ScannerUnavailableError):
        ClamdClient(fake.address, timeout=0.5).scan_stream(slow())
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "address",
    [
        "",
        "clamd.sock",
        "unix://relative/path",
        "unix://",
        "unix:///" + "a" * 200,
        "tcp://host",
        "tcp://host:0",
        "tcp://host:99999",
        "tcp://:3310",
        "tcp://host:3310/x",
        "tcp://user@host:3310",
        "http://host:3310",
        "TCP://host:3310",
    ],
)
def test_address_parsing_is_strict(address: str) -> None:
    with pytest.raises(ValueError):
        ClamdClient(address)


@pytest.mark.parametrize(
    "address",
    [
        "unix:///run/kinko/clamd.sock",
        "tcp://127.0.0.1:3310",
        "tcp://[::1]:3310",
        "tcp://clamd.internal:3310",
    ],
)
def test_address_parsing_accepts(address: str) -> None:
    assert ClamdClient(address).address == address


def test_unavailable_is_scanner_error() -> None:
    assert issubclass(ScannerUnavailableError, ScannerError)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"fd[12]: OK\0", ScanResult("clean", None, None)),
        (b"fd[7]: Eicar-Signature FOUND\0", ScanResult("infected", "Eicar-Signature", "malware")),
        (b"fd[12]: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0",
         ScanResult("refused", "Heuristics.Limits.Exceeded.MaxFileSize", "scan_limits")),
    ],
)
def test_fildes_replies(reply: bytes, expected: ScanResult) -> None:
    assert parse_scan_reply(reply, fildes=True) == expected


@pytest.mark.parametrize(
    "reply",
    [
        b"stream: OK\0",  # an answer about something else
        b"fd[]: OK\0",
        b"fd[x]: OK\0",
        b"fd[12]:OK\0",
        b"fd[12]: OK extra\0",
        b"fd[12]: ok\0",
        b" fd[12]: OK\0",
        b"fd[12]: lstat() failed. ERROR\0",
        b"fd[12]: OK\nfd[12]: OK\0",
        b"fd[12]: X FOUND\nfd[12]: OK\0",
        b"UNKNOWN COMMAND\0",
        b"",
    ],
)
def test_fildes_only_exact_ok_is_clean(reply: bytes) -> None:
    with pytest.raises(ScannerUnavailableError):
        parse_scan_reply(reply, fildes=True)


def test_instream_parser_takes_no_fd_answer() -> None:
    with pytest.raises(ScannerUnavailableError):
        parse_scan_reply(b"fd[12]: OK\0")


def test_fdscan_needs_a_unix_socket() -> None:
    with pytest.raises(ScannerUnavailableError):
        FdScan(ClamdClient("tcp://127.0.0.1:3310"), max_bytes=1 << 20)
