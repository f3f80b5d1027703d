"""The gunicorn settings that the benchmarks rely on really reach gunicorn."""

from __future__ import annotations

import importlib


class _Socket:
    """Hands out 16 KiB per recv(), as TLS does (one record), and notes the sizes asked."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.asked: list[int] = []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        n = min(size, 16384, self.left)
        self.left -= n
        return b"x" * n


def test_request_bodies_are_read_with_small_recv_calls() -> None:
    # gunicorn asks for up to 1 MiB per recv(); over TLS each call returns one
    # record, and the 1 MiB buffer is mapped and unmapped every time
    # (docs/performance.md).  If a gunicorn upgrade renamed the knob, this fails.
    importlib.import_module("portal.gunicorn_conf")
    from gunicorn.http.unreader import SocketUnreader

    sock = _Socket(10 << 20)
    reader = SocketUnreader(sock)
    got = b""
    while len(got) < (1 << 20):
        got += reader.read(65536, read_ahead=10 << 20)
    assert len(got) == 1 << 20
    assert max(sock.asked) == 64 * 1024
